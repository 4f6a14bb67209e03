"""Prompts for --predict: read, encode, check, and batch them for the estimator.

`--prompt FILE` is either a text file (the whole file is one prompt) or a `.jsonl` file with one
prompt per line (`{"prompt": "..."}`; `"text"` is accepted too), local or gs://. Each prompt is
repeated `num_samples` times; rows are right-padded to the generation's length and the last batch is filled up
with copies of the last row, whose outputs are dropped.
"""
import json
from dataclasses import dataclass
from typing import List

import numpy as np

from ..errors import UserError
from ..meshtf import tf

# The GPT-2 demo prompt the original samples from when no prompt is given.
DEFAULT_PROMPT = ("In a shocking finding, scientist discovered a herd of unicorns living in a remote, previously "
                  "unexplored valley, in the Andes Mountains. Even more surprising to the researchers was the "
                  "fact that the unicorns spoke perfect English.")


class PromptError(UserError):
    """A prompt that cannot be sampled from, worded for the user."""


@dataclass(frozen=True)
class Row:
    prompt_index: int
    sample_index: int
    prompt: str
    tokens: List[int]


def read_prompts(path):
    if not path:
        return [DEFAULT_PROMPT]
    if not tf.io.gfile.exists(path):
        raise PromptError("--prompt file %s does not exist" % path)
    if tf.io.gfile.isdir(path):
        raise PromptError("--prompt %s is a directory; give a text file (one prompt) or a .jsonl file "
                          "({\"prompt\": ...} per line)" % path)
    with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise PromptError("--prompt file %s is not UTF-8 text (byte 0x%02x at offset %d%s); save it as UTF-8, "
                          "e.g. iconv -f %s -t UTF-8" % (path, data[e.start], e.start,
                                                        ", a UTF-16 byte order mark" if utf16 and e.start < 2 else "",
                                                        "UTF-16" if utf16 else "<its encoding>")) from None
    if not path.endswith(".jsonl"):
        return [text]
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompt = record.get("prompt", record.get("text"))
        except (json.JSONDecodeError, AttributeError):
            prompt = None
        if not isinstance(prompt, str):
            raise PromptError("%s line %d is not a JSON object with a \"prompt\" string" % (path, number))
        prompts.append(prompt)
    if not prompts:
        raise PromptError("%s holds no prompts" % path)
    return prompts


def encode_prompts(prompts, tokenizer, n_ctx, n_vocab, num_samples):
    """Rows to sample: each prompt's tokens, `num_samples` times. Empty, too long, or holding a token
    the model has no embedding for (id >= n_vocab: a tokenizer larger than the model) is an error."""
    rows = []
    for index, prompt in enumerate(prompts):
        tokens = tokenizer.encode(prompt).ids
        if not tokens:
            raise PromptError("prompt %d is empty: give at least one token of text" % (index + 1))
        outside = [t for t in tokens if t >= n_vocab]
        if outside:
            raise PromptError("prompt %d encodes to token id %d (%r), but the model's ids are < n_vocab = %d: "
                              "the tokenizer is larger than the model; remove that text or use the tokenizer the "
                              "model was trained with" % (index + 1, outside[0], tokenizer.id_to_token(outside[0]),
                                                           n_vocab))
        if len(tokens) > n_ctx - 1:
            raise PromptError("prompt %d has %d tokens, but n_ctx is %d and at least one must be generated; "
                              "shorten it to %d tokens" % (index + 1, len(tokens), n_ctx, n_ctx - 1))
        rows += [Row(index, sample, prompt, tokens) for sample in range(num_samples)]
    return rows


def prompts_input_fn(rows, batch_size, length, padding_id):
    """An estimator input_fn yielding {"ids": [batch, length], "lengths": [batch]} for every row."""
    count = -(-len(rows) // batch_size) * batch_size
    filled = rows + [rows[-1]] * (count - len(rows))
    ids = np.full((count, length), padding_id, np.int32)
    for i, row in enumerate(filled):
        ids[i, :len(row.tokens)] = row.tokens
    lengths = np.array([len(row.tokens) for row in filled], np.int32)

    def input_fn(params):
        del params
        dataset = tf.data.Dataset.from_tensor_slices({"ids": ids, "lengths": lengths})
        return dataset.batch(batch_size, drop_remainder=True)

    return input_fn

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

from meshtf import tf

# The GPT-2 demo prompt the original samples from when no prompt is given.
DEFAULT_PROMPT = ("In a shocking finding, scientist discovered a herd of unicorns living in a remote, previously "
                  "unexplored valley, in the Andes Mountains. Even more surprising to the researchers was the "
                  "fact that the unicorns spoke perfect English.")


class PromptError(ValueError):
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
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
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


def encode_prompts(prompts, tokenizer, n_ctx, num_samples):
    """Rows to sample: each prompt's tokens, `num_samples` times. Empty or too long is an error."""
    rows = []
    for index, prompt in enumerate(prompts):
        tokens = tokenizer.encode(prompt).ids
        if not tokens:
            raise PromptError("prompt %d is empty: give at least one token of text" % (index + 1))
        if len(tokens) > n_ctx - 1:
            raise PromptError("prompt %d has %d tokens, but n_ctx is %d and at least one must be generated; "
                              "shorten it to %d tokens" % (index + 1, len(tokens), n_ctx, n_ctx - 1))
        rows += [Row(index, sample, prompt, tokens) for sample in range(num_samples)]
    return rows


def input_fn_for(rows, length, batch_size, padding_id):
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

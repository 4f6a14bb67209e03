"""LAMBADA (`eval_tasks: ["lambada"]`): predict the last word of a passage from the rest of it.

The data is OpenAI's `lambada_test.jsonl` (5153 passages, one `{"text": ...}` per line), the file GPT-2
was evaluated on and EleutherAI's lm-evaluation-harness reads as `lambada_openai`:

    https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl

Put it anywhere (local or gs://) and point the model config's `lambada_path` at it.

Passages are scored as the harness scores them: the last word is the text after the last space; the
context (the text before that space) and the target (" " + the word) are tokenized separately and
joined; a passage longer than n_ctx + 1 tokens keeps its last n_ctx + 1. Each passage is a row of its own,
right-padded to n_ctx, so no passage sees another (the original packed several into one row, each seeing
the ones before it, and scored only the word's last token). Rows filling up the last batch score nothing.
"""
import json
from dataclasses import dataclass

import numpy as np

from .sequential import DataError
from ..meshtf import tf

URL = "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"


@dataclass(frozen=True)
class Passage:
    context: str
    word: str


@dataclass(frozen=True)
class Encoded:
    """A passage's tokens (at most n_ctx + 1), of which the last `targets` are the word's."""

    tokens: tuple
    targets: int


def read_passages(path):
    """The passages of a LAMBADA JSONL file, local or gs://."""
    if not tf.io.gfile.exists(path):
        raise DataError("`lambada_path` %s does not exist; download %s and set lambada_path to it" % (path, URL))
    with tf.io.gfile.GFile(path, "r") as f:
        lines = f.read().splitlines()
    passages = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line).get("text")
        except (json.JSONDecodeError, AttributeError):
            text = None
        parts = text.rsplit(" ", 1) if isinstance(text, str) else []
        if len(parts) != 2 or not all(parts):
            raise DataError("%s line %d is not a JSON object whose \"text\" has a context and a last word "
                            "after a space" % (path, number))
        passages.append(Passage(*parts))
    if not passages:
        raise DataError("%s holds no passages" % path)
    return passages


def encode(passages, tokenizer, n_ctx):
    """Each passage's context + target tokens, cut to the last n_ctx + 1 (the harness's left truncation)."""
    contexts = tokenizer.encode_batch([p.context for p in passages], add_special_tokens=False)
    targets = tokenizer.encode_batch([" " + p.word for p in passages], add_special_tokens=False)
    encoded = []
    for context, target in zip(contexts, targets):
        if len(target.ids) > n_ctx:
            raise DataError("a LAMBADA word has %d tokens, more than n_ctx = %d" % (len(target.ids), n_ctx))
        encoded.append(Encoded(tuple((context.ids + target.ids)[-(n_ctx + 1):]), len(target.ids)))
    return encoded


def passages_input_fn(encoded, batch_size, n_ctx):
    """(estimator input_fn, steps): batches of ({"ids", "target_mask"}, labels) [batch, n_ctx], one
    passage per row; target_mask is 1.0 where a label is a token of the passage's last word."""
    rows = -(-len(encoded) // batch_size) * batch_size
    width = max(len(e.tokens) for e in encoded)
    # Kept at the passages' width (not n_ctx) so the graph's constant stays small; padded per row below.
    tokens = np.zeros([rows, width], np.int32)
    lengths = np.ones([rows], np.int32)
    targets = np.zeros([rows], np.int32)  # filler rows: one token, nothing to score
    for i, e in enumerate(encoded):
        tokens[i, :len(e.tokens)] = e.tokens
        lengths[i], targets[i] = len(e.tokens), e.targets

    def row(tokens, length, targets):
        ids, labels = (tf.pad(x, [[0, n_ctx - (width - 1)]]) for x in (tokens[:-1], tokens[1:]))
        # Label i is token i + 1: the word's tokens length - targets .. length - 1 are labels from length - 1 - targets.
        position = tf.range(n_ctx)
        scored = tf.logical_and(position >= length - 1 - targets, position < length - 1)
        return {"ids": ids, "target_mask": tf.cast(scored, tf.float32)}, labels

    def input_fn(params):
        del params  # the batch size is the config's eval_batch_size
        dataset = tf.data.Dataset.from_tensor_slices((tokens, lengths, targets)).map(row)
        return dataset.batch(batch_size, drop_remainder=True)

    return input_fn, rows // batch_size

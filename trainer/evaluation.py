"""Evaluation of the latest checkpoint: validation metrics and the eval tasks (`eval_tasks`: LAMBADA).

Validation reads `eval_steps` batches of the datasets' eval_path files (the same batches every time).
A position is scored when its label is >= 0: every position of a causal LM, the masked ones of a masked
LM (inputs/mlm.py). Metrics over the whole run:

    loss            the training objective (cross-entropy + z-loss), mean over batches
    cross_entropy   Σ cross-entropy (nats) / scored tokens
    perplexity      exp(cross_entropy)
    bits_per_byte   Σ cross-entropy / ln 2 / Σ bytes of the scored tokens, a token's bytes being the
                    UTF-8 bytes it decodes to (`token_byte_lengths`)
    mean_logits     mean logit over every position and the whole vocabulary

LAMBADA (inputs/lambada.py), per passage: correct when every token of the last word is the model's
greedy (argmax) prediction; nll = Σ -log p of the word's tokens. Over the passages:

    lambada_accuracy     mean of correct
    lambada_perplexity   exp(mean nll), EleutherAI's harness's per-word perplexity

Each result is logged, appended to <model_path>/eval_results.jsonl (eval_<id>.jsonl with --sacred_id) as one
JSON object (its `task`,
"validation" or "lambada", `global_step` and metrics), and written to TensorBoard by the estimator under
<model_path>/eval (validation) and <model_path>/eval_lambada.
"""
import json
import logging
import math

import numpy as np
from tokenizers import decoders

from ..errors import ConfigError
from ..inputs import lambada
from ..inputs.pipeline import input_fn_for
from ..meshtf import mtf, tf

log = logging.getLogger("gptneo")


class Evaluator:
    """Evaluation of one run, prepared once, so that a missing eval_path or LAMBADA file stops the run
    before training: the validation files, the tokenizer's byte lengths and the encoded LAMBADA passages."""

    def __init__(self, config, tokenizer, run_id=None):
        if tokenizer is None:
            raise ConfigError("evaluation needs a dataset config with `eval_path` and `tokenizer_path`")
        self.config = config
        self.results_path = "%s/%s.jsonl" % (config.model_path.rstrip("/"), "eval_" + run_id if run_id
                                             else "eval_results")
        self.validation = None
        if config.train.eval_steps > 0:
            self.validation = validation_input_fn(config, token_byte_lengths(tokenizer, config.model.n_vocab))
        self.lambada = None
        if "lambada" in config.train.eval_tasks:
            passages = lambada.read_passages(config.train.lambada_path)
            self.lambada = lambada.encode(passages, tokenizer, config.model.n_ctx)

    def run(self, estimator):
        """Run the eval tasks, then validation (when eval_steps > 0); returns their results."""
        t = self.config.train
        results = []
        if self.lambada:
            input_fn, steps = lambada.passages_input_fn(self.lambada, t.eval_batch_size, self.config.model.n_ctx)
            result = _evaluate(estimator, input_fn, steps, "lambada")
            del result["loss"]  # the estimator's per-batch mean of the word tokens' cross-entropy: no LAMBADA figure
            log.info("lambada at step %d: accuracy %.4f | perplexity %.3f | %d passages", result["global_step"],
                     result["lambada_accuracy"], result["lambada_perplexity"], len(self.lambada))
            results.append(result)
        if self.validation:
            result = _evaluate(estimator, self.validation, t.eval_steps, "validation")
            log.info("eval at step %d: loss %.4f | cross-entropy %.4f | perplexity %.3f | bits/byte %.4f",
                     result["global_step"], result["loss"], result["cross_entropy"], result["perplexity"],
                     result["bits_per_byte"])
            results.append(result)
        path = self.results_path
        existing = tf.io.gfile.GFile(path).read() if tf.io.gfile.exists(path) else ""
        # GCS objects cannot be appended to: rewrite the whole (small) file.
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(existing + "".join(json.dumps(r) + "\n" for r in results))
        return results


def _evaluate(estimator, input_fn, steps, task):
    # The estimator's TensorBoard directory is eval_<name>; validation keeps the plain eval/.
    result = estimator.evaluate(input_fn, steps=steps, name=None if task == "validation" else task)
    return dict({k: v.item() if hasattr(v, "item") else v for k, v in result.items()}, task=task)


# ---------------------------------------------------------------------------------------------
# Validation


def token_byte_lengths(tokenizer, n_vocab):
    """[n_vocab] int32: the UTF-8 bytes each token id decodes to.

    Byte-level BPE (GPT-2's, and tfrecords_tools.train_tokenizer's) writes every byte of the text as one
    character of its 256-character alphabet, so a token's bytes are its characters, and the bytes of any
    token sequence add up exactly to the bytes of the text it decodes to. Special tokens, which decoding
    drops, and ids beyond the tokenizer's vocabulary count 0. Other tokenizers: each token decoded alone.
    """
    lengths = np.zeros([n_vocab], np.int32)
    added = tokenizer.get_added_tokens_decoder()
    byte_level = isinstance(tokenizer.decoder, decoders.ByteLevel)
    for i in range(min(tokenizer.get_vocab_size(), n_vocab)):
        if i in added:
            lengths[i] = 0 if added[i].special else len(added[i].content.encode())
        elif byte_level:
            lengths[i] = len(tokenizer.id_to_token(i) or "")
        else:
            lengths[i] = len(tokenizer.decode([i]).encode())
    return lengths


def validation_input_fn(config, byte_lengths):
    """The eval batches as ({"ids", "bytes": bytes of each row's scored labels [batch]}, labels)."""
    batches = input_fn_for(config, "eval")

    def with_bytes(ids, labels):
        per_token = tf.gather(tf.constant(byte_lengths), tf.maximum(labels, 0))
        scored = tf.where(labels >= 0, per_token, tf.zeros_like(per_token))
        return {"ids": ids, "bytes": tf.reduce_sum(scored, axis=1)}, labels

    return lambda params: batches(params).map(with_bytes)


def validation_outputs(cross_entropy, logits, labels, d):
    """Per row [batch]: Σ cross-entropy of the scored positions, their number, and the mean logit."""
    scored = mtf.cast(mtf.greater_equal(labels, 0), tf.float32)
    return [mtf.reduce_sum(cross_entropy * scored, output_shape=[d.batch]),
            mtf.reduce_sum(scored, output_shape=[d.batch]),
            mtf.reduce_mean(mtf.to_float(logits), output_shape=[d.batch])]


def validation_metrics(cross_entropy, scored, mean_logits, byte_count):
    """The validation metrics (see the module doc) from the per-row tensors; the estimator adds `loss`."""
    nats_per_token = _ratio(cross_entropy, scored)
    nats_per_byte = _ratio(cross_entropy, tf.cast(byte_count, tf.float32))
    return {
        "cross_entropy": nats_per_token,
        "perplexity": tuple(tf.exp(x) for x in nats_per_token),
        "bits_per_byte": tuple(x / math.log(2) for x in nats_per_byte),
        "mean_logits": tf.metrics.mean(mean_logits),
    }


def _ratio(numerator, denominator):
    """Σ numerator / Σ denominator over the whole run, as a (value, update op) metric pair."""
    # Both means run over the same rows, so their ratio is the ratio of the sums.
    top, top_update = tf.metrics.mean(numerator)
    bottom, bottom_update = tf.metrics.mean(denominator)
    return top / bottom, top_update / bottom_update


# ---------------------------------------------------------------------------------------------
# LAMBADA


def lambada_outputs(cross_entropy, logits, labels, target_mask, d):
    """(loss: mean cross-entropy of the scored tokens, per row [batch]: Σ cross-entropy of the word's
    tokens, how many of them are not the argmax prediction, and how many there are)."""
    missed = 1.0 - mtf.cast(mtf.equal(mtf.argmax(logits, d.vocab), labels), tf.float32)
    per_row = [mtf.reduce_sum(x * target_mask, output_shape=[d.batch]) for x in (cross_entropy, missed)]
    targets = mtf.reduce_sum(target_mask, output_shape=[d.batch])
    loss = mtf.reduce_sum(per_row[0]) / mtf.maximum(mtf.reduce_sum(targets), 1.0)
    return loss, per_row + [targets]


def lambada_metrics(nll, missed, targets):
    """lambada_accuracy and lambada_perplexity (see the module doc) from the per-row tensors."""
    passage = tf.cast(targets > 0, tf.float32)  # rows filling up the last batch have no target
    mean_nll = tf.metrics.mean(nll, weights=passage)
    return {
        "lambada_accuracy": tf.metrics.mean(tf.cast(tf.equal(missed, 0.0), tf.float32), weights=passage),
        "lambada_perplexity": tuple(tf.exp(x) for x in mean_nll),
    }

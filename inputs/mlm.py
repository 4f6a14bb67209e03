"""Masked-LM examples (`mlm_training`): BERT-style masking of the input mode's batches.

Each example is the n_ctx input tokens of a window of the configured input (sequential_input or
generic_text); with `mlm_cls_token_id` that id comes first and the window's last token is dropped.
Positions whose token is not in `mlm_mask_ignore_ids` (nor the CLS id) are masked with probability
`mlm_mask_prob`. A masked position's input becomes `mlm_mask_id`, or with probability
`mlm_same_token_prob` stays the token, or with probability `mlm_random_token_prob` becomes an id drawn
uniformly from [0, n_vocab of the first dataset config). Labels are the original token at masked
positions and -1 elsewhere: only masked positions are scored (models/gpt.py, trainer/evaluation.py).

Fixes of the original's sampler: its labels were inverted (0 at masked positions, the token
elsewhere, so it learned to copy unmasked tokens); its random replacement hit every position, not
only masked ones; and it never masked id 0 whatever that id was (list ids in mlm_mask_ignore_ids).

Batch b of a run (the batch of training step b + 1; eval batches count from 0 every time) is masked
with stateless random numbers keyed by (seed, mode, b), so a resumed run masks exactly as an
uninterrupted one.
"""
from .generic_text import random_key, random_seed
from ..meshtf import tf


def masking(build, config, mode, global_step=0):
    """`build` (a function returning batches of (inputs, labels)) masked: batches of (inputs, labels) of
    the masked LM, starting at batch `global_step` (training) or 0 (eval)."""
    d = config.data
    first_batch = global_step if mode == "train" else 0
    uniform_key, id_key = random_key(d.seed, "mlm", mode), random_key(d.seed, "mlm ids", mode)
    cls = d.mlm_cls_token_id
    ignored_ids = sorted(set(d.mlm_mask_ignore_ids) | ({cls} if cls is not None else set()))
    # Random replacements come from the data's vocabulary, not the model's padded one.
    data_vocab = d.dataset_configs[0].n_vocab

    def mask(batch, inputs):
        ignored = tf.constant(ignored_ids, tf.int32, shape=[len(ignored_ids)])
        if cls is not None:
            inputs = tf.concat([tf.fill([tf.shape(inputs)[0], 1], cls), inputs[:, :-1]], axis=1)
        masked_draw, kind_draw = tf.unstack(
            tf.random.stateless_uniform(tf.concat([[2], tf.shape(inputs)], 0), seed=random_seed(uniform_key, batch)))
        random_ids = tf.random.stateless_uniform(tf.shape(inputs), seed=random_seed(id_key, batch), maxval=data_vocab,
                                                 dtype=tf.int32)
        maskable = tf.logical_not(tf.reduce_any(tf.equal(inputs[..., None], ignored), axis=-1))
        masked = tf.logical_and(masked_draw < d.mlm_mask_prob, maskable)
        # What a masked input becomes: draws in [0, same) keep the token, [same, same + random) take a
        # random id, the rest mlm_mask_id.
        keep = kind_draw < d.mlm_same_token_prob
        randomize = tf.logical_and(tf.logical_not(keep), kind_draw < d.mlm_same_token_prob + d.mlm_random_token_prob)
        replaced = tf.where(randomize, random_ids, tf.fill(tf.shape(inputs), d.mlm_mask_id))
        new_inputs = tf.where(tf.logical_and(masked, tf.logical_not(keep)), replaced, inputs)
        return new_inputs, tf.where(masked, inputs, -tf.ones_like(inputs))

    return lambda: build().enumerate(first_batch).map(lambda batch, example: mask(batch, example[0]))

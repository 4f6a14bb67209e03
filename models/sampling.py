"""Autoregressive sampling with key/value caches, as one Mesh-TF while loop.

Step t feeds the token at position t - 1 of every row through `gpt_step` (one token's worth of
projections and MLP, attention over the cache) and chooses the token at position t. Rows whose
prompt is longer keep their prompt token (teacher forcing), so prompts of different lengths
share a batch. A row stops at its first generated `eos_id`, after `max_new_tokens`, or at n_ctx.
"""
from dataclasses import dataclass
from typing import Optional

from meshtf import mtf, tf
from models.gpt import gpt_step
from models.layers import DecodeStep


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.9      # 0 = greedy; the original's fixed value is the default
    top_k: int = 0                # keep the k most likely tokens (0 = all)
    top_p: float = 1.0            # keep the smallest set of tokens whose probability reaches p
    max_new_tokens: Optional[int] = None  # None = up to n_ctx
    seed: int = 1
    stop_at_eos: bool = True


def generate(ids, lengths, d, model_config, sampling, eos_id, seed, record_logits=False):
    """ids [batch, sequence] (prompts, any padding after them), lengths [batch] -> ids with samples.

    With `record_logits` every position is teacher-forced and the logits of each step are kept:
    returns (ids, logits [batch, sequence, vocab]) — what full-forward logits must equal.
    """
    mesh = ids.mesh
    n_ctx = d.sequence.size
    ring = model_config.local_attention_radius < n_ctx and "local" in model_config.attention_types
    caches = []
    for kind in model_config.attention_types:
        memory = d.local_memory if kind == "local" and ring else d.memory_length
        shape = mtf.Shape([d.batch, memory, d.heads, d.features_per_head])
        caches += [mtf.zeros(mesh, shape), mtf.zeros(mesh, shape)]
    state = [mtf.constant(mesh, 1, dtype=tf.int32), ids,
             _finished(lengths, mtf.constant(mesh, 1, dtype=tf.int32), n_ctx, sampling.max_new_tokens),
             mtf.constant(mesh, -1, shape=mtf.Shape([d.local_memory]), dtype=tf.int32),
             mtf.constant(mesh, 0, dtype=tf.int32)] + caches
    if record_logits:
        state.append(mtf.zeros(mesh, mtf.Shape([d.batch, d.sequence, d.vocab])))
    last_step = n_ctx + 1 if record_logits else n_ctx

    def cond(t, ids, done, *rest):
        if record_logits:  # every position, whatever the rows' state
            return mtf.less(t, last_step)
        return mtf.logical_and(mtf.less(t, last_step), mtf.less(mtf.reduce_min(done), 1))

    def body(t, ids, done, ring_positions, slot, *rest):
        position = t - 1
        tokens = mtf.reduce_sum(ids * mtf.one_hot(position, d.sequence, dtype=tf.int32), reduced_dim=d.sequence)
        ring_slot = mtf.one_hot(slot, d.local_memory, dtype=tf.float32)
        ring_positions = mtf.where(mtf.cast(ring_slot, tf.bool), position + mtf.zeros_like(ring_positions),
                                   ring_positions)
        step = DecodeStep(position, ring_slot if ring else None, ring_positions if ring else None)
        layer_caches = [tuple(rest[i:i + 2]) for i in range(0, 2 * len(model_config.attention_types), 2)]
        logits, layer_caches = gpt_step(tokens, step, layer_caches, d, model_config, seed)
        logits = mtf.to_float(logits)
        chosen = choose(logits, t, d, sampling)
        # Write the choice at t for rows past their prompt that are still going.
        write = mtf.cast(mtf.greater_equal(t, lengths), tf.int32) * (1 - done)
        ids += mtf.one_hot(t, d.sequence, dtype=tf.int32) * write * (chosen - ids)
        stopped = write * mtf.cast(mtf.equal(chosen, eos_id), tf.int32) if sampling.stop_at_eos else 0 * write
        done = mtf.maximum(mtf.maximum(done, stopped), _finished(lengths, t + 1, n_ctx, sampling.max_new_tokens))
        next_slot = (slot + 1) * mtf.cast(mtf.less(slot + 1, d.local_memory.size), tf.int32)
        out = [t + 1, ids, done, ring_positions, next_slot] + [x for cache in layer_caches for x in cache]
        if record_logits:
            out.append(rest[-1] + mtf.one_hot(position, d.sequence, dtype=tf.float32) * logits)
        return out

    final = mtf.while_loop(cond, body, state)
    return (final[1], final[-1]) if record_logits else final[1]


def _finished(lengths, t, n_ctx, max_new_tokens):
    """1 for rows that must not write position t: past n_ctx or past their max_new_tokens."""
    limit = mtf.minimum(lengths + max_new_tokens, n_ctx) if max_new_tokens is not None else n_ctx + 0 * lengths
    return mtf.cast(mtf.greater_equal(t, limit), tf.int32)


def choose(logits, t, d, sampling):
    """The next token per row from logits [batch, vocab] (float32), with temperature, top-k, top-p.

    Runs as plain TensorFlow on each batch slice with the whole vocabulary. Random numbers come
    from a stateless generator keyed by (seed, step) and each row's global index, so a seed gives
    the same samples on any mesh.
    """
    rows = mtf.range(logits.mesh, d.batch, tf.int32)
    batch, vocab = d.batch.size, d.vocab.size
    # A name no layout rule splits: every slice gets the whole vocabulary.
    logits = mtf.rename_dimension(logits, d.vocab.name, "sampling_vocab")

    def pick(logits, rows, t):
        if sampling.temperature == 0:
            return tf.argmax(logits, axis=-1, output_type=tf.int32)
        logits = restrict(logits / sampling.temperature, sampling.top_k, sampling.top_p)
        uniform = tf.random.stateless_uniform([batch, vocab], seed=tf.stack([sampling.seed, t]),
                                              minval=1e-9, maxval=1.0)
        gumbel = -tf.math.log(-tf.math.log(tf.gather(uniform, rows)))
        return tf.argmax(logits + gumbel, axis=-1, output_type=tf.int32)

    return mtf.slicewise(pick, [logits, rows, t], output_shape=mtf.Shape([d.batch]), output_dtype=tf.int32,
                         splittable_dims=[d.batch])


def restrict(logits, top_k, top_p):
    """Set the logits outside the top-k and outside the top-p nucleus to -inf (TensorFlow, [rows, vocab])."""
    if top_k and top_k < logits.shape[-1]:
        kth = tf.math.top_k(logits, top_k).values[:, -1:]
        logits = tf.where(logits < kth, -float("inf") * tf.ones_like(logits), logits)
    if top_p < 1.0:
        ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
        probabilities = tf.nn.softmax(ordered, axis=-1)
        before = tf.cumsum(probabilities, axis=-1, exclusive=True)
        # The most likely token is always kept; then every token while the mass before it is < p.
        threshold = tf.reduce_min(tf.where(before < top_p, ordered, float("inf") * tf.ones_like(ordered)),
                                  axis=-1, keepdims=True)
        logits = tf.where(logits < threshold, -float("inf") * tf.ones_like(logits), logits)
    return logits

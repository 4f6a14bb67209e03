"""Autoregressive sampling with per-layer caches (keys and values), as one Mesh-TF while loop.

The first `min_prompt_length - 1` positions, prompt in every row, run through the model in one
parallel pass that fills the caches. Then step t feeds the token at position t - 1 of every row
through `gpt_step` (one token's worth of projections and MLP, attention over the cache) and
chooses the token at position t. Rows whose prompt is longer keep their prompt token (teacher
forcing), so prompts of different lengths share a batch. A row stops at its first generated
`eos_id`, after `max_new_tokens`, or at the end of `ids`.
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional

from meshtf import mtf, tf
from models import dims as names
from models.attention import decode_state
from models.entmax import entmax
from models.gpt import gpt_step, gpt_with_cache


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.9      # 0 = greedy; the original's fixed value is the default
    top_k: int = 0                # keep the k most likely tokens (0 = all)
    top_p: float = 1.0            # keep the smallest set of tokens whose probability reaches p
    max_new_tokens: Optional[int] = None  # None = up to n_ctx
    seed: int = 1
    entmax: bool = False          # sample from 1.3-entmax(logits) (the original's --entmax_sampling)


def decode_length(longest_prompt, max_new_tokens, n_ctx, multiple=64):
    """The sequence length a generation needs, rounded up to `multiple` (so that few graphs are
    built) and capped at n_ctx: the caches are this long, not n_ctx."""
    needed = n_ctx if max_new_tokens is None else min(n_ctx, longest_prompt + max_new_tokens)
    return min(n_ctx, -(-needed // multiple) * multiple)


def generate(ids, lengths, d, model_config, sampling, eos_id, seed, min_prompt_length=1, record_logits=False):
    """ids [batch, sequence] (prompts, any padding after them), lengths [batch] -> ids with samples.

    `sequence` may be shorter than n_ctx (see `decode_length`). Every prompt must have at least
    `min_prompt_length` tokens. With `record_logits` every position is teacher-forced and the
    logits of each position are kept: returns (ids, logits [batch, sequence, vocab]), what
    full-forward logits must equal.
    """
    mesh = ids.mesh
    c = model_config
    sequence = ids.shape.get_dim_by_name(names.SEQUENCE)
    d = dataclasses.replace(d, sequence=sequence, memory_length=mtf.Dimension(names.MEMORY_LENGTH, sequence.size),
                            local_memory=mtf.Dimension(names.LOCAL_MEMORY_LENGTH,
                                                       min(c.local_attention_radius, sequence.size)))
    prefill = min(min_prompt_length, sequence.size) - 1
    caches, logits = _prefilled_caches(ids, prefill, d, c, seed, record_logits)
    # The loop carries a flat list of tensors: each layer's state is `sizes[i]` of them.
    sizes = [len(cache) for cache in caches]
    first = mtf.constant(mesh, prefill + 1, dtype=tf.int32)
    state = [first, ids, _finished(lengths, first, sequence.size, sampling.max_new_tokens)]
    state += [x for cache in caches for x in cache]
    if record_logits:
        state.append(logits)
    last_step = sequence.size + 1 if record_logits else sequence.size

    def cond(t, ids, done, *rest):
        if record_logits:  # every position, whatever the rows' state
            return mtf.less(t, last_step)
        return mtf.logical_and(mtf.less(t, last_step), mtf.less(mtf.reduce_min(done), 1))

    def body(t, ids, done, *rest):
        position = t - 1
        tokens = mtf.reduce_sum(ids * mtf.one_hot(position, sequence, dtype=tf.int32), reduced_dim=sequence)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        layer_caches = [tuple(rest[start:start + size]) for start, size in zip(starts, sizes)]
        logits, layer_caches = gpt_step(tokens, position, layer_caches, d, c, seed)
        logits = mtf.to_float(logits)
        chosen = choose(logits, t, d, sampling)
        # Write the choice at t for rows past their prompt that are still going.
        write = mtf.cast(mtf.greater_equal(t, lengths), tf.int32) * (1 - done)
        ids += mtf.one_hot(t, sequence, dtype=tf.int32) * write * (chosen - ids)
        stopped = write * mtf.cast(mtf.equal(chosen, eos_id), tf.int32)
        done = mtf.maximum(mtf.maximum(done, stopped), _finished(lengths, t + 1, sequence.size, sampling.max_new_tokens))
        out = [t + 1, ids, done] + [x for cache in layer_caches for x in cache]
        if record_logits:
            out.append(rest[-1] + mtf.one_hot(position, sequence, dtype=tf.float32) * logits)
        return out

    final = mtf.while_loop(cond, body, state)
    return (final[1], final[-1]) if record_logits else final[1]


def _prefilled_caches(ids, prefill, d, c, seed, record_logits):
    """Every layer's decoding state (a tuple of tensors, see attention.decode_state) holding the first
    `prefill` positions, computed in one pass; and with `record_logits` their logits, padded to
    [batch, sequence, vocab] (else None)."""
    if prefill == 0:
        caches = [decode_state(kind, ids.mesh, d, c) for kind in c.attention_types]
        return caches, (mtf.zeros(ids.mesh, mtf.Shape([d.batch, d.sequence, d.vocab])) if record_logits else None)
    prefix = mtf.slice(ids, 0, prefill, names.SEQUENCE)
    part = dataclasses.replace(d, sequence=prefix.shape.get_dim_by_name(names.SEQUENCE),
                               memory_length=mtf.Dimension(names.MEMORY_LENGTH, prefill))
    logits, layers = gpt_with_cache(prefix, part, c, False, seed, logits=record_logits)
    caches = [decode_state(kind, ids.mesh, d, c, layer) for kind, layer in zip(c.attention_types, layers)]
    if record_logits:
        logits = mtf.pad(mtf.to_float(logits), [0, d.sequence.size - prefill], names.SEQUENCE)
    return caches, logits


def _finished(lengths, t, length, max_new_tokens):
    """1 for rows that must not write position t: past `length` or past their max_new_tokens."""
    limit = mtf.minimum(lengths + max_new_tokens, length) if max_new_tokens is not None else length + 0 * lengths
    return mtf.cast(mtf.greater_equal(t, limit), tf.int32)


def choose(logits, t, d, sampling):
    """The next token per row from logits [batch, vocab] (float32), with temperature, top-k, top-p; or
    with `sampling.entmax` from p = 1.3-entmax(logits) by its inverse CDF (no temperature, as the original).

    Runs as plain TensorFlow on each batch slice with the whole vocabulary. Random numbers come
    from a stateless generator keyed by (seed, step) and each row's global index, so a seed gives
    the same samples on any mesh.
    """
    rows = mtf.range(logits.mesh, d.batch, tf.int32)
    batch, vocab = d.batch.size, d.vocab.size
    if sampling.entmax and sampling.temperature != 0:
        logits = entmax(logits, d.vocab)
    # A name no layout rule splits: every slice gets the whole vocabulary.
    logits = mtf.rename_dimension(logits, d.vocab.name, "sampling_vocab")

    def pick(logits, rows, t):
        if sampling.temperature == 0:
            return tf.argmax(logits, axis=-1, output_type=tf.int32)
        if sampling.entmax:  # `logits` are probabilities: the first token whose cumulative mass exceeds u
            cumulative = tf.cumsum(logits, axis=-1)
            uniform = tf.random.stateless_uniform([batch, 1], seed=tf.stack([sampling.seed, t]))
            above = cumulative > tf.gather(uniform, rows) * cumulative[:, -1:]  # u < the total mass: one exists
            return tf.argmax(tf.cast(above, tf.int32), axis=-1, output_type=tf.int32)
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

"""Autoregressive sampling with per-layer caches (keys and values), as one Mesh-TF while loop.

The first `min_prompt_length - 1` positions, prompt in every row, run through the model in one
parallel pass that fills the caches. Then step t feeds the token at position t - 1 of every row
through `gpt_step` (one token's worth of projections and MLP, attention over the cache) and
chooses the token at position t. Rows whose prompt is longer keep their prompt token (teacher
forcing), so prompts of different lengths share a batch. A row stops at its first generated
`eos_id`, after `predict_max_steps` new tokens, or at the end of `ids`.
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional

from ..meshtf import mtf, tf
from . import dims as names
from .attention import decode_state
from .entmax import entmax
from .gpt import gpt_step, gpt_with_cache


@dataclass(frozen=True)
class PredictConfig:
    """How --predict samples: the config group `predict` (field names are its keys). `temperature`,
    `top_k`, `top_p`, `num_samples` and `entmax_sampling` are new keys."""

    temperature: float = 0.9          # 0 = greedy; the original's fixed value is the default
    top_k: int = 0                    # keep the k most likely tokens (0 = all)
    top_p: float = 1.0                # keep the smallest set of tokens whose probability reaches p
    predict_max_steps: Optional[int] = None  # new tokens per sample; None = up to n_ctx
    num_samples: int = 1              # samples per prompt
    remove_partial_sequences: bool = False   # output only the continuation, not the prompt
    entmax_sampling: bool = False     # sample from 1.3-entmax(logits), not softmax (the original's flag)
    predict_precision: str = "float32"  # what sampling computes in (new key; see models.gpt.variable_dtype)


def decode_length(longest_prompt, max_new_tokens, n_ctx, multiple=64):
    """The sequence length a generation needs, rounded up to `multiple` (so that few graphs are
    built) and capped at n_ctx: the caches are this long, not n_ctx."""
    needed = n_ctx if max_new_tokens is None else min(n_ctx, longest_prompt + max_new_tokens)
    return min(n_ctx, -(-needed // multiple) * multiple)


def generate(ids, lengths, ctx, sampling, eos_id, min_prompt_length=1):
    """ids [batch, sequence] (prompts, any padding after them), lengths [batch] -> ids with samples.

    `sequence` may be shorter than n_ctx (see `decode_length`). Every prompt must have at least
    `min_prompt_length` tokens. `ctx` (train=False) is the model's; its seed also keys the draws (`choose`).
    """
    sequence = ids.shape.get_dim_by_name(names.SEQUENCE)
    ctx = dataclasses.replace(ctx, d=ctx.d.for_length(sequence.size))
    max_new_tokens = sampling.predict_max_steps
    prefill = min(min_prompt_length, sequence.size) - 1
    caches = _prefilled_caches(ids, prefill, ctx)
    # The loop carries a flat list of tensors: each layer's state is `sizes[i]` of them.
    sizes = [len(cache) for cache in caches]
    first = mtf.constant(ids.mesh, prefill + 1, dtype=tf.int32)
    state = [first, ids, _finished(lengths, first, sequence.size, max_new_tokens)]
    state += [x for cache in caches for x in cache]

    def cond(t, ids, done, *_):
        return mtf.logical_and(mtf.less(t, sequence.size), mtf.less(mtf.reduce_min(done), 1))

    def body(t, ids, done, *flat):
        position = t - 1
        tokens = mtf.reduce_sum(ids * mtf.one_hot(position, sequence, dtype=tf.int32), reduced_dim=sequence)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        caches = [tuple(flat[start:start + size]) for start, size in zip(starts, sizes)]
        logits, caches = gpt_step(tokens, position, caches, ctx)
        chosen = choose(mtf.to_float(logits), t, sampling, ctx)
        # Write the choice at t for rows past their prompt that are still going.
        write = mtf.cast(mtf.greater_equal(t, lengths), tf.int32) * (1 - done)
        ids += mtf.one_hot(t, sequence, dtype=tf.int32) * write * (chosen - ids)
        stopped = write * mtf.cast(mtf.equal(chosen, eos_id), tf.int32)
        done = mtf.maximum(mtf.maximum(done, stopped), _finished(lengths, t + 1, sequence.size, max_new_tokens))
        return [t + 1, ids, done] + [x for cache in caches for x in cache]

    return mtf.while_loop(cond, body, state)[1]


def _prefilled_caches(ids, prefill, ctx):
    """Every layer's decoding state (a tuple of tensors, see attention.decode_state) holding the first
    `prefill` positions, computed in one pass."""
    kinds = ctx.c.attention_types
    if prefill == 0:
        return [decode_state(kind, ids.mesh, ctx) for kind in kinds]
    prefix = mtf.slice(ids, 0, prefill, names.SEQUENCE)
    _, layers = gpt_with_cache(prefix, dataclasses.replace(ctx, d=ctx.d.for_length(prefill)), logits=False)
    return [decode_state(kind, ids.mesh, ctx, layer) for kind, layer in zip(kinds, layers)]


def _finished(lengths, t, length, max_new_tokens):
    """1 for rows that must not write position t: past `length` or past their max_new_tokens."""
    limit = mtf.minimum(lengths + max_new_tokens, length) if max_new_tokens is not None else length + 0 * lengths
    return mtf.cast(mtf.greater_equal(t, limit), tf.int32)


def choose(logits, t, sampling, ctx):
    """The next token per row from logits [batch, vocab] (float32), with temperature, top-k, top-p; or
    with `entmax_sampling` from p = 1.3-entmax(logits) by its inverse CDF (no temperature, as the original).

    Runs as plain TensorFlow on each batch slice with the whole vocabulary. Random numbers come
    from a stateless generator keyed by (ctx.seed, step) and each row's global index, so a seed gives
    the same samples on any mesh.
    """
    d = ctx.d
    rows = mtf.range(logits.mesh, d.batch, tf.int32)
    batch, vocab = d.batch.size, d.vocab.size
    if sampling.entmax_sampling and sampling.temperature != 0:
        logits = entmax(logits, d.vocab)
    # A name no layout rule splits: every slice gets the whole vocabulary.
    logits = mtf.rename_dimension(logits, d.vocab.name, "sampling_vocab")

    def pick(logits, rows, t):
        if sampling.temperature == 0:
            return tf.argmax(logits, axis=-1, output_type=tf.int32)
        if sampling.entmax_sampling:  # `logits` are probabilities: the first token whose cumulative mass > u
            cumulative = tf.cumsum(logits, axis=-1)
            uniform = tf.random.stateless_uniform([batch, 1], seed=tf.stack([ctx.seed, t]))
            above = cumulative > tf.gather(uniform, rows) * cumulative[:, -1:]  # u < the total mass: one exists
            return tf.argmax(tf.cast(above, tf.int32), axis=-1, output_type=tf.int32)
        logits = restrict(logits / sampling.temperature, sampling.top_k, sampling.top_p)
        uniform = tf.random.stateless_uniform([batch, vocab], seed=tf.stack([ctx.seed, t]),
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

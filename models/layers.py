"""GPT-Neo's building blocks in Mesh-TF: LayerNorm, dense, attention (global, local), MLP.

Variable scopes and names are checkpoint API (see the original's variable table), so every
scope below is written literally where the variable is created.
"""
import zlib
from dataclasses import dataclass
from typing import Optional

from meshtf import mtf, tf
from models import dims as names

LAYER_NORM_EPSILON = 1e-5
GLOBAL_MASK_VALUE = -1e10
LOCAL_MASK_VALUE = -1e9


def normal_initializer(stddev, name, seed):
    """N(0, stddev) seeded from the variable's full name.

    An op-level seed keeps initial values independent of how many ops the graph already has,
    so the same config gives the same weights on every mesh and in every run.
    """
    scope = tf.get_variable_scope().name
    full_name = "%s/%s" % (scope, name) if scope else name
    return tf.random_normal_initializer(stddev=stddev, seed=(zlib.crc32(full_name.encode()) + seed) % (2 ** 31))


def layer_norm(x, dim, name, dtype):
    """y = (x - mean) / sqrt(biased var + 1e-5) * g + b, over `dim`."""
    with tf.variable_scope(name):
        g = mtf.get_variable(x.mesh, "g", [dim], initializer=tf.ones_initializer(), dtype=dtype)
        b = mtf.get_variable(x.mesh, "b", [dim], initializer=tf.zeros_initializer(), dtype=dtype)
    x -= mtf.reduce_mean(x, reduced_dim=dim)
    variance = mtf.reduce_mean(mtf.square(x), reduced_dim=dim)
    return x * mtf.rsqrt(variance + LAYER_NORM_EPSILON) * g + b


def dense(x, in_dim, out_dim, name, stddev, dtype, seed, bias=True):
    """x @ kernel[in_dim, out_dim] (+ bias), variables `<name>/kernel` and `<name>/bias`."""
    with tf.variable_scope(name):
        kernel = mtf.get_variable(x.mesh, "kernel", [in_dim, out_dim],
                                  initializer=normal_initializer(stddev, "kernel", seed), dtype=dtype)
        y = mtf.einsum([x, kernel], reduced_dims=[in_dim])
        if bias:
            y += mtf.get_variable(x.mesh, "bias", [out_dim], initializer=tf.zeros_initializer(), dtype=dtype)
    return y


def dropout(x, rate, train):
    return mtf.dropout(x, is_training=True, rate=rate) if train and rate > 0 else x


# ---------------------------------------------------------------------------------------------
# Attention


def local_block_length(n_ctx, radius):
    """Smallest block length >= radius that divides n_ctx, or None when blocks would not help.

    A query block then sees its own block and the previous one, which holds every key of its
    window (positions p - radius + 1 .. p).
    """
    for length in range(radius, n_ctx // 2 + 1):
        if n_ctx % length == 0:
            return length
    return None


def attention_masks(mesh, model_config, d):
    """Additive masks, built once per graph and shared by every layer of a kind."""
    masks = {}
    kinds = set(model_config.attention_types)
    query = mtf.range(mesh, d.sequence, tf.int32)
    key = mtf.range(mesh, d.memory_length, tf.int32)
    if "global" in kinds:
        masks["global"] = mtf.cast(mtf.less(query, key), tf.float32) * GLOBAL_MASK_VALUE
    if "local" in kinds:
        radius = model_config.local_attention_radius
        length = local_block_length(model_config.n_ctx, radius)
        if length is None:
            distance = query - key
            visible = mtf.logical_and(mtf.greater_equal(distance, 0), mtf.less(distance, radius))
            masks["local"] = (1.0 - mtf.cast(visible, tf.float32)) * LOCAL_MASK_VALUE
        else:
            blocks = mtf.Dimension(names.NUM_BLOCKS, model_config.n_ctx // length)
            q_pos = mtf.range(mesh, mtf.Dimension(names.QUERY_BLOCK_LENGTH, length), tf.int32)
            m_pos = mtf.range(mesh, mtf.Dimension(names.MEMORY_BLOCK_LENGTH, 2 * length), tf.int32)
            block = mtf.range(mesh, blocks, tf.int32)
            # Memory slot j of block b holds position b*L + j - L.
            distance = q_pos + length - m_pos
            visible = mtf.logical_and(
                mtf.logical_and(mtf.greater_equal(distance, 0), mtf.less(distance, radius)),
                mtf.greater_equal(block * length + m_pos, length))
            masks["local"] = (1.0 - mtf.cast(visible, tf.float32)) * LOCAL_MASK_VALUE
            masks["local_block_length"] = length
    return masks


def attention(h, kind, d, model_config, masks, train, dtype, seed):
    """Multi-head attention of `kind` over h [batch, sequence, embd]; output [batch, sequence, embd].

    Logits are q·kᵀ in float32 without 1/sqrt(head_size): GPT-Neo folds that factor into the
    initialiser of q, so trained checkpoints expect unscaled dot products.
    """
    c = model_config
    with tf.variable_scope("attn"):
        q, k, v = _qkv(h, d, c, dtype, seed)
        if kind == "global":
            out = _full_attention(q, k, v, d, masks["global"], c.attn_dropout, train)
        else:
            out = _local_attention(q, k, v, d, masks, c.n_ctx)
        out = _output_projection(out, d, c, dtype, seed)
    return dropout(out, c.res_dropout, train)


def _qkv(h, d, c, dtype, seed):
    return (_project(h, d, "q", (c.n_embd * c.head_size) ** -0.5, dtype, seed),
            _project(h, d, "k", c.n_embd ** -0.5, dtype, seed),
            _project(h, d, "v", c.n_embd ** -0.5, dtype, seed))


def _output_projection(out, d, c, dtype, seed):
    """Concatenated heads [.., heads, features_per_head] @ o + o_b -> [.., embd]."""
    out = mtf.replace_dimensions(out, [d.heads, d.features_per_head], d.heads_combined)
    o = mtf.get_variable(out.mesh, "o", [d.heads_combined, d.embd],
                         initializer=normal_initializer(c.n_embd ** -0.5, "o", seed), dtype=dtype)
    out = mtf.einsum([out, o], reduced_dims=[d.heads_combined])
    with tf.variable_scope("compute_output_bias"):
        out += mtf.get_variable(out.mesh, "o_b", [d.embd], initializer=tf.zeros_initializer(), dtype=dtype)
    return out


@dataclass(frozen=True)
class DecodeStep:
    """Where one decoding step is: the position of its token, and for local layers whose window is
    shorter than the context, the ring buffer slot it writes (one-hot) and the position each slot
    holds afterwards (-1 for a slot not written yet). All local layers share these."""

    position: mtf.Tensor
    ring_slot: Optional[mtf.Tensor] = None
    ring_positions: Optional[mtf.Tensor] = None


def attention_step(h, kind, d, model_config, cache, step, dtype, seed):
    """Attention of one new token per row, h [batch, embd] at `step.position`, over its layer's cache.

    Global layers keep keys/values of every position [batch, memory_length, ...]; local layers a
    ring buffer of their window [batch, local_memory_length, ...] (see `DecodeStep`), so a step
    costs attention over the window only. Returns (output [batch, embd], updated cache).
    """
    c = model_config
    with tf.variable_scope("attn"):
        q, k, v = _qkv(h, d, c, dtype, seed)
        if kind == "local" and step.ring_slot is not None:
            here, visible = step.ring_slot, mtf.greater_equal(step.ring_positions, 0)
            mask_value = LOCAL_MASK_VALUE
        else:
            here = mtf.one_hot(step.position, d.memory_length, dtype=tf.float32)
            key = mtf.range(h.mesh, d.memory_length, tf.int32)
            visible = mtf.less_equal(key, step.position)
            if kind == "local":  # a window that covers the whole context
                visible = mtf.logical_and(visible, mtf.greater(key, step.position - c.local_attention_radius))
            mask_value = GLOBAL_MASK_VALUE if kind == "global" else LOCAL_MASK_VALUE
        k_cache, v_cache = (old + mtf.cast(here, new.dtype) * (new - old) for old, new in zip(cache, (k, v)))
        memory = k_cache.shape.dims[1]
        logits = mtf.einsum([mtf.to_float(q), mtf.to_float(k_cache)], output_shape=[d.batch, d.heads, memory])
        logits += (1.0 - mtf.cast(visible, tf.float32)) * mask_value
        weights = mtf.softmax(logits, memory)
        out = mtf.einsum([mtf.cast(weights, v_cache.dtype), v_cache], output_shape=[d.batch, d.heads, d.features_per_head])
        return _output_projection(out, d, c, dtype, seed), (k_cache, v_cache)


def _project(h, d, name, stddev, dtype, seed):
    """h @ W[embd, heads*features_per_head] split into [..., heads, features_per_head] (heads-major)."""
    w = mtf.get_variable(h.mesh, name, [d.embd, d.heads_combined],
                         initializer=normal_initializer(stddev, name, seed), dtype=dtype)
    x = mtf.einsum([h, w], reduced_dims=[d.embd])
    return mtf.replace_dimensions(x, d.heads_combined, [d.heads, d.features_per_head])


def _full_attention(q, k, v, d, mask, attn_dropout, train):
    """Attention over all n_ctx keys (renamed to memory_length) under an additive mask."""
    k = mtf.rename_dimension(k, names.SEQUENCE, names.MEMORY_LENGTH)
    v = mtf.rename_dimension(v, names.SEQUENCE, names.MEMORY_LENGTH)
    logits = mtf.einsum([mtf.to_float(q), mtf.to_float(k)],
                        output_shape=[d.batch, d.heads, d.sequence, d.memory_length]) + mask
    weights = dropout(mtf.softmax(logits, d.memory_length), attn_dropout, train)
    return mtf.einsum([mtf.cast(weights, v.dtype), v],
                      output_shape=[d.batch, d.sequence, d.heads, d.features_per_head])


def _local_attention(q, k, v, d, masks, n_ctx):
    """Each query sees the `local_attention_radius` keys ending at its own position (no dropout)."""
    length = masks.get("local_block_length")
    if length is None:  # no useful block split: all keys under a band mask
        return _full_attention(q, k, v, d, masks["local"], 0.0, train=False)
    blocks = mtf.Dimension(names.NUM_BLOCKS, n_ctx // length)
    q_block = mtf.Dimension(names.QUERY_BLOCK_LENGTH, length)
    m_block = mtf.Dimension(names.MEMORY_BLOCK_LENGTH, length)
    q = mtf.replace_dimensions(q, d.sequence, [blocks, q_block])
    k, v = (_previous_and_current_block(mtf.replace_dimensions(t, d.sequence, [blocks, m_block]), blocks)
            for t in (k, v))
    m_both = k.shape.get_dim_by_name(names.MEMORY_BLOCK_LENGTH)
    logits = mtf.einsum([mtf.to_float(q), mtf.to_float(k)],
                        output_shape=[d.batch, d.heads, blocks, q_block, m_both]) + masks["local"]
    weights = mtf.softmax(logits, m_both)
    out = mtf.einsum([mtf.cast(weights, v.dtype), v],
                     output_shape=[d.batch, blocks, q_block, d.heads, d.features_per_head])
    return mtf.replace_dimensions(out, [blocks, q_block], d.sequence)


def _previous_and_current_block(x, blocks):
    """[.., blocks, memory_block_length=L, ..] -> [.., blocks, memory_block_length=2L, ..]."""
    previous = mtf.shift(x, offset=1, dim=blocks, wrap=False)
    return mtf.concat([previous, x], names.MEMORY_BLOCK_LENGTH)


# ---------------------------------------------------------------------------------------------
# MLP


def mlp(h, d, model_config, train, dtype, seed):
    """c_proj(gelu(c_fc(h))) with the original's `conv1d_main` scopes and init scaling."""
    c = model_config
    fc_std = 0.02 * (d.embd.size ** -0.5 if c.scale_by_in else 1.0)
    proj_std = 0.02 * (c.n_layer ** -0.5 if c.scale_by_depth else 1.0) * (
        d.intermediate.size ** -0.5 if c.scale_by_in else 1.0)
    with tf.variable_scope("mlp"), tf.variable_scope("conv1d_main"):
        x = dense(h, d.embd, d.intermediate, "c_fc", fc_std, dtype, seed)
        x = mtf.gelu(x)  # tanh approximation, HF's "gelu_new"
        x = dense(x, d.intermediate, d.embd, "c_proj", proj_std, dtype, seed)
    return dropout(x, c.res_dropout, train)

"""Attention in Mesh-TF, by layer kind, for training and for one-token decoding steps:

- global: softmax over every position up to the query, and with `num_mem_kv` over learned memory
  keys/values as well;
- local: softmax over the `local_attention_radius` keys ending at the query;
- linear: q softmaxed over its features, φ(k) = exp(k),
  out_t = q_t·Σ_{s≤t} φ(k_s)ᵀv_s / q_t·(Σ_{s≤t} φ(k_s) + ε);
  not causal (masked-LM models), k softmaxed over the sequence and out = q·Σ_s kᵀv;
- none: no attention (the block handles it, see gpt.py).

With `rotary_emb`, queries and keys of every kind are first turned by their position (models/positions.py).
Variable scopes and names are checkpoint API (see the original's variable table).
"""
from ..meshtf import mtf, tf
from . import dims as names
from .layers import dropout, in_xla, normal_initializer, softmax
from .positions import rotary_angles, rotate

GLOBAL_MASK_VALUE = -1e10
LOCAL_MASK_VALUE = -1e9
# Keeps linear attention's normaliser q·Σφ(k) away from zero.
LINEAR_EPSILON = 1e-6


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
    """Masks for a sequence of d.sequence positions (n_ctx in training, fewer when a prompt is
    prefilled), built once per graph and shared by every layer of a kind: additive for the softmax
    kinds (global, local), 0/1 for causal linear attention.

    A masked LM (`mlm_training`) is not causal: global layers see every position, local ones the keys
    p - radius + 1 .. p + radius of query p (the original's window).
    """
    masks = {}
    n = d.sequence.size
    kinds = set(model_config.attention_types)
    causal = not model_config.mlm_training
    query = mtf.range(mesh, d.sequence, tf.int32)
    key = mtf.range(mesh, d.memory_length, tf.int32)
    if "global" in kinds:
        masks["global"] = (mtf.cast(mtf.less(query, key), tf.float32) * GLOBAL_MASK_VALUE if causal
                           else mtf.zeros(mesh, mtf.Shape([d.sequence, d.memory_length])))
    if "linear" in kinds and causal:
        masks["linear"] = mtf.cast(mtf.greater_equal(query, key), tf.float32)
    if "local" in kinds:
        radius = model_config.local_attention_radius
        # A block sees itself and the block before it: the keys of causal windows only.
        length = local_block_length(n, radius) if causal else None
        if length is None:
            distance = query - key
            visible = mtf.logical_and(mtf.greater_equal(distance, 0 if causal else -radius), mtf.less(distance, radius))
            masks["local"] = (1.0 - mtf.cast(visible, tf.float32)) * LOCAL_MASK_VALUE
        else:
            blocks = mtf.Dimension(names.NUM_BLOCKS, n // length)
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


def attention(h, kind, ctx):
    """Multi-head attention of `kind` (not "none") over h [batch, sequence, embd], under ctx.masks.

    Softmax logits are q·kᵀ in float32 without 1/sqrt(head_size): GPT-Neo folds that factor into
    the initialiser of q, so trained checkpoints expect unscaled dot products.
    Returns (output [batch, sequence, embd], (keys, values) [batch, sequence, heads, features_per_head]),
    keys as attended (turned, with rotary embeddings): what `decode_state` starts decoding from.
    """
    c, d = ctx.c, ctx.d
    with tf.variable_scope("attn"):
        q, k, v = _qkv(h, ctx)
        if c.rotary_emb:
            angles = rotary_angles(mtf.range(h.mesh, d.sequence, tf.int32), d)
            q, k = rotate(q, angles), rotate(k, angles)
        if kind == "global":
            out = _full_attention(q, k, v, ctx.masks["global"], ctx, c.attn_dropout, _memory_key_values(h.mesh, ctx))
        elif kind == "local":
            out = _local_attention(q, k, v, ctx)
        elif c.mlm_training:  # not causal
            out = _linear_attention(q, k, v, d)
        else:
            out = _causal_linear_attention(q, k, v, d, ctx.masks["linear"])
        out = _output_projection(out, ctx)
    return dropout(out, c.res_dropout, ctx.train), (k, v)


def _qkv(h, ctx):
    n_embd, head_size = ctx.c.n_embd, ctx.c.head_size
    return (_project(h, "q", (n_embd * head_size) ** -0.5, ctx),
            _project(h, "k", n_embd ** -0.5, ctx),
            _project(h, "v", n_embd ** -0.5, ctx))


def _project(h, name, stddev, ctx):
    """h @ W[embd, heads*features_per_head] split into [..., heads, features_per_head] (heads-major)."""
    d = ctx.d
    w = mtf.get_variable(h.mesh, name, [d.embd, d.heads_combined],
                         initializer=normal_initializer(stddev, name, ctx.seed), dtype=ctx.dtype)
    x = mtf.einsum([h, w], reduced_dims=[d.embd])
    return mtf.replace_dimensions(x, d.heads_combined, [d.heads, d.features_per_head])


def _output_projection(out, ctx):
    """Concatenated heads [.., heads, features_per_head] @ o + o_b -> [.., embd]."""
    d = ctx.d
    out = mtf.replace_dimensions(out, [d.heads, d.features_per_head], d.heads_combined)
    o = mtf.get_variable(out.mesh, "o", [d.heads_combined, d.embd],
                         initializer=normal_initializer(ctx.c.n_embd ** -0.5, "o", ctx.seed), dtype=ctx.dtype)
    out = mtf.einsum([out, o], reduced_dims=[d.heads_combined])
    with tf.variable_scope("compute_output_bias"):
        out += mtf.get_variable(out.mesh, "o_b", [d.embd], initializer=tf.zeros_initializer(), dtype=ctx.dtype)
    return out


def _memory_key_values(mesh, ctx):
    """The `num_mem_kv` learned (keys, values) [mem_kv_sequence, heads, features_per_head] that every
    query of a global layer sees besides the context (the all-attention paper's persistent memory);
    None without them. The original built them but sized its keys for the context only, so they
    could not run; here they join the softmax as extra keys, visible to every query."""
    c, d = ctx.c, ctx.d
    if not c.num_mem_kv:
        return None
    slots = mtf.Dimension(names.MEM_KV_SEQUENCE, c.num_mem_kv)
    with tf.variable_scope("attention"):
        return tuple(mtf.get_variable(mesh, name, [slots, d.heads, d.features_per_head],
                                      initializer=normal_initializer(c.head_size ** -0.5, name, ctx.seed),
                                      dtype=ctx.dtype)
                     for name in ("mem_k", "mem_v"))


def _softmax_with_memory(logits, key_dim, memory_logits, memory_dim):
    """One softmax over the keys along `key_dim` and the memory slots together -> (key weights,
    memory weights). (mtf.softmax's extra_logit would stop the gradient of the memory's share.)"""
    key_lse = mtf.reduce_logsumexp(logits, key_dim)
    memory_lse = mtf.reduce_logsumexp(memory_logits, memory_dim)
    top = mtf.stop_gradient(mtf.maximum(key_lse, memory_lse))
    log_z = top + mtf.log(mtf.exp(key_lse - top) + mtf.exp(memory_lse - top))
    return mtf.exp(logits - log_z), mtf.exp(memory_logits - log_z)


def _full_attention(q, k, v, mask, ctx, attn_dropout=0.0, memory=None):
    """Attention over all keys of the sequence (renamed to memory_length) under an additive mask, and
    over the memory key/values when given."""
    d = ctx.d
    k = mtf.rename_dimension(k, names.SEQUENCE, names.MEMORY_LENGTH)
    v = mtf.rename_dimension(v, names.SEQUENCE, names.MEMORY_LENGTH)
    q = mtf.to_float(q)
    logits = mtf.einsum([q, mtf.to_float(k)], output_shape=[d.batch, d.heads, d.sequence, d.memory_length]) + mask
    if memory is None:
        weights = dropout(softmax(logits, d.memory_length), attn_dropout, ctx.train)
        return mtf.einsum([mtf.cast(weights, v.dtype), v],
                          output_shape=[d.batch, d.sequence, d.heads, d.features_per_head])
    memory_k, memory_v = memory
    slots = memory_k.shape.dims[0]
    memory_logits = mtf.einsum([q, mtf.to_float(memory_k)], output_shape=[d.batch, d.heads, d.sequence, slots])
    weights, memory_weights = (dropout(w, attn_dropout, ctx.train) for w in
                               _softmax_with_memory(logits, d.memory_length, memory_logits, slots))
    output_shape = [d.batch, d.sequence, d.heads, d.features_per_head]
    return (mtf.einsum([mtf.cast(weights, v.dtype), v], output_shape=output_shape)
            + mtf.einsum([mtf.cast(memory_weights, v.dtype), memory_v], output_shape=output_shape))


def _local_attention(q, k, v, ctx):
    """Each query sees the `local_attention_radius` keys ending at its own position (no dropout)."""
    d, masks = ctx.d, ctx.masks
    length = masks.get("local_block_length")
    if length is None:  # no useful block split: all keys under a band mask
        return _full_attention(q, k, v, masks["local"], ctx)
    blocks = mtf.Dimension(names.NUM_BLOCKS, d.sequence.size // length)
    q_block = mtf.Dimension(names.QUERY_BLOCK_LENGTH, length)
    m_block = mtf.Dimension(names.MEMORY_BLOCK_LENGTH, length)
    q = mtf.replace_dimensions(q, d.sequence, [blocks, q_block])
    k, v = (_previous_and_current_block(mtf.replace_dimensions(t, d.sequence, [blocks, m_block]), blocks)
            for t in (k, v))
    m_both = k.shape.get_dim_by_name(names.MEMORY_BLOCK_LENGTH)
    logits = mtf.einsum([mtf.to_float(q), mtf.to_float(k)],
                        output_shape=[d.batch, d.heads, blocks, q_block, m_both]) + masks["local"]
    weights = softmax(logits, m_both)
    out = mtf.einsum([mtf.cast(weights, v.dtype), v],
                     output_shape=[d.batch, blocks, q_block, d.heads, d.features_per_head])
    return mtf.replace_dimensions(out, [blocks, q_block], d.sequence)


def _previous_and_current_block(x, blocks):
    """[.., blocks, memory_block_length=L, ..] -> [.., blocks, memory_block_length=2L, ..]."""
    previous = mtf.shift(x, offset=1, dim=blocks, wrap=False)
    return mtf.concat([previous, x], names.MEMORY_BLOCK_LENGTH)


def _causal_linear_attention(q, k, v, d, causal):
    """out_t = q_t·Σ_{s≤t} φ(k_s)ᵀv_s / q_t·(Σ_{s≤t} φ(k_s) + ε), q softmaxed over its features, φ = exp.

    The same sums regrouped by key: Σ_{s≤t} w_ts·v_s / (Σ_{s≤t} w_ts + ε·Σ_i q_ti) with w_ts = q_t·φ(k_s),
    so training holds [sequence, memory_length] weights as global attention does instead of the
    original's running [sequence, features_per_head, features_per_head] sums (decoding keeps those
    sums: see `decode_state`). No dropout, as the original.
    """
    q = softmax(mtf.to_float(q), d.features_per_head)
    k = mtf.exp(mtf.to_float(mtf.rename_dimension(k, names.SEQUENCE, names.MEMORY_LENGTH)))
    weights = mtf.einsum([q, k], output_shape=[d.batch, d.heads, d.sequence, d.memory_length]) * causal
    normaliser = mtf.reduce_sum(weights, reduced_dim=d.memory_length) + LINEAR_EPSILON * mtf.reduce_sum(
        q, reduced_dim=d.features_per_head)
    v = mtf.rename_dimension(v, names.SEQUENCE, names.MEMORY_LENGTH)
    return mtf.einsum([mtf.cast(weights / normaliser, v.dtype), v],
                      output_shape=[d.batch, d.sequence, d.heads, d.features_per_head])


def _linear_attention(q, k, v, d):
    """Not causal: out = q·Σ_s kᵀv_s with q softmaxed over its features and k over the sequence."""
    q = _key_features(softmax(mtf.to_float(q), d.features_per_head), d)
    k = _key_features(softmax(mtf.to_float(k), d.sequence), d)
    state = mtf.einsum([k, mtf.to_float(v)], output_shape=[d.batch, d.heads, _key_features_dim(d), d.features_per_head])
    return mtf.cast(mtf.einsum([q, state], output_shape=[d.batch, d.sequence, d.heads, d.features_per_head]), v.dtype)


def _key_features_dim(d):
    return mtf.Dimension(names.FEATURES_PER_HEAD_IN, d.features_per_head.size)


def _key_features(x, d):
    """Features of a query or key renamed, so that kᵀv has two feature dimensions."""
    return mtf.rename_dimension(x, d.features_per_head.name, names.FEATURES_PER_HEAD_IN)


# ---------------------------------------------------------------------------------------------
# Decoding: one token per row and step, over a per-layer state


def decode_state(kind, mesh, ctx, keys_values=None):
    """The state `attention_step` carries for a layer of `kind`, holding positions 0..n-1 from their
    keys and values [batch, sequence=n, heads, features_per_head] as `attention` returns them (no
    positions without them). ctx.d has the decode length as its sequence.

    global, local: (keys, values) [batch, heads, memory, features_per_head] in float32 whatever the
        precision (bfloat16 values are exact in float32, and a step then casts no cache), position p in
        slot p (memory = memory_length). A local layer whose window is shorter than the decode length keeps a
        ring buffer of its window instead (memory = local_memory_length, position p in slot p mod
        window), so a step costs attention over the window only.
    linear: (Σ φ(k_s)ᵀv_s [batch, heads, features_per_head_in, features_per_head], Σ φ(k_s) [batch,
        heads, features_per_head_in]): the causal sums, so a step costs features_per_head² per head.
    none: ().
    """
    d = ctx.d
    if kind == "none":
        return ()
    if kind == "linear":
        features_in = _key_features_dim(d)
        shapes = ([d.batch, d.heads, features_in, d.features_per_head], [d.batch, d.heads, features_in])
        if keys_values is None:
            return tuple(mtf.zeros(mesh, mtf.Shape(shape)) for shape in shapes)
        keys, values = keys_values
        phi_k = _key_features(mtf.exp(mtf.to_float(keys)), d)
        return (mtf.einsum([phi_k, mtf.to_float(values)], output_shape=shapes[0]),
                mtf.reduce_sum(phi_k, output_shape=shapes[1]))
    ring = kind == "local" and ctx.c.local_attention_radius < d.sequence.size
    memory = d.local_memory if ring else d.memory_length
    if keys_values is None:
        caches = [mtf.zeros(mesh, mtf.Shape([d.batch, d.heads, memory, d.features_per_head])) for _ in range(2)]
    else:
        caches = [_slots(mtf.to_float(x), memory, d) for x in keys_values]
    return tuple(_own_buffer(x) for x in caches)


def _slots(x, memory, d):
    """Keys or values [batch, sequence=n, heads, features_per_head] of positions 0..n-1 as a cache
    [batch, heads, memory, features_per_head]: slot p for position p, or p mod window in a ring."""
    n = x.shape.get_dim_by_name(names.SEQUENCE).size
    if memory.name == names.LOCAL_MEMORY_LENGTH and n > memory.size:
        # Keep the last window; position n - window + j belongs in slot (n - window + j) mod window.
        x = mtf.slice(x, n - memory.size, memory.size, names.SEQUENCE)
        x = mtf.shift(mtf.rename_dimension(x, names.SEQUENCE, memory.name), (n - memory.size) % memory.size,
                      memory, wrap=True)
    else:
        x = mtf.pad(mtf.rename_dimension(x, names.SEQUENCE, memory.name), [0, memory.size - n], memory.name)
    return mtf.transpose(x, mtf.Shape([d.batch, d.heads, memory, d.features_per_head]))


def attention_step(h, kind, state, position, ctx):
    """Attention of one new token per row, h [batch, embd] at `position`, over its layer's state
    (see `decode_state`). Returns (output [batch, embd], updated state)."""
    with tf.variable_scope("attn"):
        q, k, v = _qkv(h, ctx)
        if ctx.c.rotary_emb:
            angles = rotary_angles(position, ctx.d)
            q, k = rotate(q, angles), rotate(k, angles)
        if kind == "linear":
            out, state = _linear_step(q, k, v, state, ctx.d)
        else:
            state = _written(state, k, v, position, ctx.d)
            out = _softmax_step(q, kind, state, position, ctx)
            state = tuple(_once_read(cache, out, ctx.d) for cache in state)
        return _output_projection(out, ctx), state


def _written(cache, k, v, position, d):
    """The (keys, values) cache [batch, heads, memory, features_per_head] with k and v written at
    `position`'s slot: slot `position`, or in a ring buffer (local_memory_length) position mod window."""
    slots = cache[0].shape.dims[2]
    slot = mtf.mod(position, slots.size) if slots.name == names.LOCAL_MEMORY_LENGTH else position
    return tuple(write_slot(old, new, slot, d) for old, new in zip(cache, (k, v)))


def _visible(kind, slots, position, c):
    """Which of the cache's `slots` a query at `position` sees (bool [slots])."""
    slot = mtf.range(position.mesh, slots, tf.int32)
    if slots.name == names.LOCAL_MEMORY_LENGTH:
        # Slot s holds the latest position p <= `position` with p = s (mod window): exactly
        # the window (position - window, position], minus positions before 0.
        return mtf.greater_equal(position - mtf.mod(position - slot, slots.size), 0)
    visible = mtf.less_equal(slot, position)
    if kind == "local":  # a window that covers the whole context
        visible = mtf.logical_and(visible, mtf.greater(slot, position - c.local_attention_radius))
    return visible


def _softmax_step(q, kind, cache, position, ctx):
    """Global or local attention of q [batch, heads, features_per_head] at `position` over its (keys,
    values) cache, which holds this position's key and value; global layers also see their memory
    key/values."""
    d = ctx.d
    k_cache, v_cache = cache
    slots = k_cache.shape.dims[2]
    dtype = q.dtype  # the activations': the weights are rounded to it, as `attention` rounds them
    q = mtf.to_float(q)
    logits = _per_slice("bhf,bhmf->bhm", q, k_cache, [d.batch, d.heads, slots], d)
    mask_value = GLOBAL_MASK_VALUE if kind == "global" else LOCAL_MASK_VALUE
    logits += (1.0 - mtf.cast(_visible(kind, slots, position, ctx.c), tf.float32)) * mask_value
    output_dims = [d.batch, d.heads, d.features_per_head]
    memory = _memory_key_values(q.mesh, ctx) if kind == "global" else None
    if memory is None:
        weights = softmax(logits, slots)
        return _per_slice("bhm,bhmf->bhf", mtf.cast(weights, dtype), v_cache, output_dims, d)
    memory_k, memory_v = memory
    memory_slots = memory_k.shape.dims[0]
    memory_logits = mtf.einsum([q, mtf.to_float(memory_k)], output_shape=[d.batch, d.heads, memory_slots])
    weights, memory_weights = _softmax_with_memory(logits, slots, memory_logits, memory_slots)
    return (_per_slice("bhm,bhmf->bhf", mtf.cast(weights, dtype), v_cache, output_dims, d)
            + mtf.einsum([mtf.cast(memory_weights, memory_v.dtype), memory_v], output_shape=output_dims))


def _linear_step(q, k, v, state, d):
    """Causal linear attention of one position: add φ(k)ᵀv and φ(k) to the sums, then
    out = q·Σφ(k)ᵀv / q·(Σφ(k) + ε)."""
    kv_sum, k_sum = state
    phi_k = _key_features(mtf.exp(mtf.to_float(k)), d)
    kv_sum += mtf.einsum([phi_k, mtf.to_float(v)], output_shape=kv_sum.shape)
    k_sum += phi_k
    q = _key_features(softmax(mtf.to_float(q), d.features_per_head), d)
    numerator = mtf.einsum([q, kv_sum], output_shape=[d.batch, d.heads, d.features_per_head])
    normaliser = mtf.einsum([q, k_sum + LINEAR_EPSILON], output_shape=[d.batch, d.heads])
    return mtf.cast(numerator / normaliser, v.dtype), (kv_sum, k_sum)


def write_slot(cache, new, index, d):
    """cache [batch, heads, memory, features_per_head] with `new` [batch, heads, features_per_head]
    written at memory slot `index` (a scalar), in the cache's own buffer.

    TensorScatterUpdate copied the whole cache at every token (in a while loop its input is never the
    last reference). InplaceUpdate writes into its input and returns it, which is safe because (1) the old
    cache's only reader is this write, (2) a step passes its cache on only once it has read it
    (`_once_read`), so the next step's write waits for this step's reads, and (3) `decode_state` gives
    each cache a buffer of its own, never a constant's. XLA (TPU) updates its buffers in place by itself."""
    def update(cache, new, index):
        new = tf.cast(new, cache.dtype)
        if in_xla():
            rows, heads = tf.meshgrid(tf.range(tf.shape(cache)[0]), tf.range(tf.shape(cache)[1]), indexing="ij")
            where = tf.stack([rows, heads, tf.fill(tf.shape(rows), index)], axis=-1)
            return tf.tensor_scatter_nd_update(cache, where, new)
        # Rows (b, h, index) of the cache as [batch·heads·memory, features_per_head]; reshapes share buffers.
        shape = tf.shape(cache)
        rows = tf.range(shape[0] * shape[1]) * shape[2] + index
        written = tf.raw_ops.InplaceUpdate(x=tf.reshape(cache, [-1, shape[3]]), i=rows,
                                           v=tf.reshape(new, [-1, shape[3]]))
        return tf.reshape(written, shape)

    return mtf.slicewise(update, [cache, new, index], output_shape=cache.shape, output_dtype=cache.dtype,
                         splittable_dims=[d.batch, d.heads])


def _once_read(cache, out, d):
    """cache, passed on only once `out` [batch, heads, features_per_head], which read it, is computed: so
    the next step's in-place write (`write_slot`) cannot overtake this step's reads, whatever feeds it."""
    def after(cache, out):
        with tf.control_dependencies([out]):
            return tf.identity(cache)

    return mtf.slicewise(after, [cache, out], output_shape=cache.shape, output_dtype=cache.dtype,
                         splittable_dims=[d.batch, d.heads])


def _own_buffer(x):
    """x in a buffer no other tensor shares (`write_slot` writes into it): a constant's would carry one
    generation's writes into the next."""
    def copy(x):
        return x if in_xla() else tf.raw_ops.DeepCopy(x=x)

    return mtf.slicewise(copy, [x], output_shape=x.shape, output_dtype=x.dtype, splittable_dims=x.shape.dims)


def _per_slice(equation, x, y, output_dims, d):
    """A batched matmul per slice: tf.einsum(equation) with batch and heads split as laid out, in float32
    and rounded once to x's dtype (TF's bfloat16 einsum is many times slower on CPUs without bfloat16
    kernels; see trainer.hardware.cpu_multiplies_bfloat16).

    mtf.einsum would broadcast-multiply the whole cache and then reduce it."""
    def product(a, b):
        return tf.cast(tf.einsum(equation, tf.cast(a, tf.float32), tf.cast(b, tf.float32)), a.dtype)

    return mtf.slicewise(product, [x, y], output_shape=mtf.Shape(output_dims), output_dtype=x.dtype,
                         splittable_dims=[d.batch, d.heads])

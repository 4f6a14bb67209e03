"""The GPT-Neo model: embeddings, pre-norm blocks, tied output, cross-entropy with z-loss.

    h0 = wte[x] + wpe[0..n-1]        (or the axial table's rows; rotary embeddings act in attention instead)
    h  = h + Attn_i(LN_1(h));  h = h + MLP(LN_2(h))      for each layer i     (variants: see `_layer`)
    logits = LN_f(h) · wteᵀ                    (`no_weight_tie`: h · W + b, no LN_f, as the original)
    loss = mean over tokens of ℓ(logits, labels) + Σ MoE load-balancing losses

Each function takes the call's `ctx` (models/context.py): dims, config, mode, dtypes and seed.
"""
import dataclasses

from ..meshtf import mtf, tf
from .attention import attention, attention_masks, attention_step
from .chunked_loss import tied_log_z_and_target
from .entmax import entmax_loss
from .layers import dense, dropout, embed, layer_norm, log_z_and_target, mlp, normal_initializer, rezero, scale_norm
from .moe import moe
from .positions import position_embedding


def variable_dtype(precision, training=True):
    """The variables' dtypes for `precision` ("float32" or "bfloat16", as the original): bfloat16 stores
    the weights (masters, so checkpoints) in bfloat16, keeps and updates the per-device slices in float32
    so small updates are not rounded away, and computes in bfloat16 (attention logits and the loss in float32).
    Not `training` (sampling), nothing is updated: the slices are bfloat16 too (a one-device mesh then
    keeps no second copy of the weights)."""
    if precision == "bfloat16":
        return mtf.VariableDType(master_dtype=tf.bfloat16, slice_dtype=tf.float32 if training else tf.bfloat16,
                                 activation_dtype=tf.bfloat16)
    return mtf.VariableDType(tf.float32)


def gpt(ids, ctx):
    """Token ids [batch, sequence] -> logits [batch, sequence, vocab] (variables under `gpt2/`)."""
    return _forward(ids, ctx)[0]


def gpt_with_cache(ids, ctx, logits=True):
    """`gpt` that also returns each layer's keys and values [batch, sequence, heads, features_per_head]
    (() for a layer without attention).

    The sequence may be shorter than n_ctx (a prompt, prefilled before decoding); without
    `logits` the output projection is skipped and None returned in its place.
    """
    return _forward(ids, ctx, None if logits else lambda h, wte: None)[:2]


def gpt_losses(ids, labels, ctx, logits=True):
    """The objective for ids -> labels [batch, sequence]: (loss, per-token loss [batch, sequence], logits).

    ℓ is cross-entropy + z-loss (the per-token loss returned is the cross-entropy alone), or with
    `entmax_loss` the 1.3-entmax loss (no z-loss, as the original). A masked LM (`mlm_training`)
    averages ℓ over its scored positions only, those with a label >= 0 (see inputs/mlm.py).
    With `chunked_loss` and without `logits` (a training step that needs only the loss), the tied output
    layer and the cross-entropy run as one op over chunks of the vocabulary (models/chunked_loss.py),
    which never holds the whole logits or their gradient, and None is returned in their place.
    """
    c, d = ctx.c, ctx.d
    scored = mtf.cast(mtf.greater_equal(labels, 0), tf.float32) if c.mlm_training else None
    if c.chunked_loss and not logits:  # validation: tied, cross-entropy
        def head(h, wte):
            return tied_log_z_and_target(layer_norm(h, d.embd, "ln_f", ctx.dtype), wte, labels, d.vocab)

        (log_z, target_logit), _, balance = _forward(ids, ctx, head)
        loss, per_token = _cross_entropy_and_z_loss(log_z, target_logit, c.z_loss, scored)
        return (loss if balance is None else loss + balance), per_token, None
    logits, _, balance = _forward(ids, ctx)
    if c.entmax_loss:
        per_token = entmax_loss(logits, labels, d.vocab)
        loss = _mean(per_token, scored)
    else:
        loss, per_token = token_losses(logits, labels, d, c.z_loss, scored)
    return (loss if balance is None else loss + balance), per_token, logits


def _forward(ids, ctx, head=None):
    """(head(the final residual stream, wte), each layer's cache, the MoE layers' summed load-balancing
    loss or None); the head defaults to the logits."""
    c, d = ctx.c, ctx.d
    with tf.variable_scope("gpt2"):
        wte = _token_table(ids.mesh, ctx)
        h = dropout(embed(wte, ids, d.vocab), c.embed_dropout, ctx.train)
        if not c.rotary_emb:
            positions = mtf.range(ids.mesh, d.sequence, tf.int32)
            h += dropout(position_embedding(positions, ctx), c.embed_dropout, ctx.train)

        ctx = dataclasses.replace(ctx, masks=attention_masks(ids.mesh, c, d))  # one set for every layer
        caches, balance = [], []
        for i, kind in enumerate(c.attention_types):
            with tf.variable_scope(_layer_scope(i, c)):
                h, aux, cache = _block(h, i, kind, ctx)
            caches.append(cache)
            balance += [aux] if aux is not None else []
        out = _logits(h, wte, ctx) if head is None else head(h, wte)
        return out, caches, (mtf.add_n(balance) if balance else None)


def gpt_step(tokens, position, caches, ctx):
    """One token per row, tokens [batch] at `position` -> (logits [batch, vocab], new caches).

    The same weights and arithmetic as `gpt`, for incremental decoding: each layer attends over
    its cache (see attention.attention_step) instead of recomputing the sequence.
    """
    c = ctx.c
    with tf.variable_scope("gpt2"):
        wte = _token_table(tokens.mesh, ctx)
        h = embed(wte, tokens, ctx.d.vocab)
        if not c.rotary_emb:
            h += position_embedding(position, ctx)
        new_caches = []
        for i, kind in enumerate(c.attention_types):
            def attend(x, cache=caches[i]):
                return attention_step(x, kind, cache, position, ctx)

            with tf.variable_scope(_layer_scope(i, c)):
                h, _, cache = _layer(h, i, kind, attend, ctx)
            new_caches.append(cache)
        return _logits(h, wte, ctx), new_caches


def _token_table(mesh, ctx):
    return mtf.get_variable(mesh, "wte", [ctx.d.vocab, ctx.d.embd],
                            initializer=normal_initializer(0.02, "wte", ctx.seed), dtype=ctx.dtype)


def _layer_scope(i, c):
    # Shared parameters: every layer in the original's empty scope, so the names are `gpt2//norm_1/g`, ...
    return "" if c.share_parameters else "h%d" % i


def _block(h, i, kind, ctx):
    """Layer i over a sequence: (new h, load-balancing loss or None, its attention's (keys, values);
    None under recompute_grad)."""
    def layer(x):
        return _layer(x, i, kind, lambda x: attention(x, kind, ctx), ctx)

    if ctx.c.recompute_grad and ctx.train:  # the layer runs again in the backward pass
        if _has_experts(i, ctx.c):
            h, aux = mtf.recompute_grad(lambda x: layer(x)[:2], [h])
            return h, aux, None
        return mtf.recompute_grad(lambda x: layer(x)[0], [h]), None, None
    return layer(h)


def _layer(x, i, kind, attend, ctx):
    """Layer i on x [batch, (sequence,) embd], for a sequence and a decoding step alike; `attend`
    is its attention, x -> (output, cache). Returns (new x, load-balancing loss or None, cache).

        x = x + ½·MLP_macaron(x)                            (macaron, on the un-normalised x)
        x = x + R_1(Attn(N_1(x)))                           ("none" layers: x + R_1(x), as the original)
        x = x + R_2(s·FF(N_2(x)))       s = ½ with macaron, else 1; FF = MLP, or experts in `moe_layers`

    N is LayerNorm, or with `scalenorm` a normalisation with one scalar gain; R is the identity. With
    `rezero` there are no norms and R(y) = g·y, g a learned scalar starting at 0.
    """
    c = ctx.c
    if c.macaron:
        x += 0.5 * mlp(x, ctx, scope="mlp_macaron")
    if kind == "none":
        out, cache = x, ()
    else:
        out, cache = attend(_norm(x, "norm_1", ctx))
    x += _residual(out, "norm_rezero_1", ctx)
    if _has_experts(i, c):
        out, aux = moe(_norm(x, "norm_2", ctx), ctx)
        out = dropout(out, c.res_dropout, ctx.train)  # the original dropped out in every mode
    else:
        out, aux = mlp(_norm(x, "norm_2", ctx), ctx), None
    if c.macaron:
        out *= 0.5
    return x + _residual(out, "norm_rezero_2", ctx), aux, cache


def _has_experts(i, c):
    return i in (c.moe_layers or ())


def _norm(x, name, ctx):
    if ctx.c.rezero:
        return x
    norm = scale_norm if ctx.c.scalenorm else layer_norm
    return norm(x, ctx.d.embd, name, ctx.dtype)


def _residual(out, name, ctx):
    return rezero(out, name, ctx.dtype) if ctx.c.rezero else out


def _logits(h, wte, ctx):
    """LN_f(h) · wteᵀ, or with `no_weight_tie` h · W + b of the unnormalised residual stream: the
    original has no LN_f there, so its checkpoints hold no `ln_f` and restore to what they computed."""
    c, d = ctx.c, ctx.d
    if c.no_weight_tie:
        with tf.variable_scope("wte_final_linear"), tf.variable_scope("conv1d_main"):
            return dense(h, d.embd, d.vocab, "linear_out", 0.02 * (d.embd.size ** -0.5 if c.scale_by_in else 1.0), ctx)
    h = layer_norm(h, d.embd, "ln_f", ctx.dtype)
    return mtf.einsum([h, wte], output_shape=mtf.Shape(h.shape.dims[:-1] + [d.vocab]))


def token_losses(logits, labels, d, z_loss, scored=None):
    """Per-token cross-entropy and z-loss (float32): ℓ = logZ - z_target + z_loss·logZ².

    Returns (mean loss, per-token cross-entropy [batch, sequence]); the mean is over the positions
    where `scored` [batch, sequence] is 1 when it is given.
    A label outside [0, n_vocab) has no target logit, so only its z-loss term counts (as the original's
    all-zero one-hot).
    """
    return _cross_entropy_and_z_loss(*log_z_and_target(logits, labels, d.vocab), z_loss, scored)


def _cross_entropy_and_z_loss(log_z, target_logit, z_loss, scored):
    cross_entropy = log_z - target_logit
    per_token = cross_entropy + z_loss * mtf.square(log_z)
    return _mean(per_token, scored), cross_entropy


def _mean(per_token, scored):
    if scored is None:
        return mtf.reduce_mean(per_token)
    return mtf.reduce_sum(per_token * scored) / mtf.maximum(mtf.reduce_sum(scored), 1.0)

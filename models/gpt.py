"""The GPT-Neo model: embeddings, pre-norm blocks, tied output, cross-entropy with z-loss.

    h0 = wte[x] + wpe[0..n-1]
    h  = h + Attn_i(LN_1(h));  h = h + MLP(LN_2(h))      for each layer i
    logits = LN_f(h) · wteᵀ
"""
from meshtf import mtf, tf
from models import dims as names
from models.layers import (attention, attention_masks, attention_step, dropout, layer_norm, mlp,
                           normal_initializer)


def gpt(ids, d, model_config, train, seed, dtype=None):
    """Token ids [batch, sequence] -> logits [batch, sequence, vocab] (variables under `gpt2/`)."""
    c = model_config
    dtype = dtype or mtf.VariableDType(tf.float32)
    mesh = ids.mesh
    with tf.variable_scope("gpt2"):
        wte, wpe = _embedding_tables(mesh, d, dtype, seed)
        # A one-hot lookup, as the original: an id >= n_vocab (GPT-Neo's padding id 50257)
        # embeds as a zero vector instead of failing.
        h = dropout(mtf.gather(wte, ids, d.vocab), c.embed_dropout, train)
        # Positions 0..n_ctx-1 are all rows of wpe, in order.
        h += dropout(mtf.rename_dimension(wpe, names.EMBED_SEQUENCE, names.SEQUENCE), c.embed_dropout, train)

        masks = attention_masks(mesh, c, d)
        for i, kind in enumerate(c.attention_types):
            with tf.variable_scope("h%d" % i):
                h = _block(h, kind, d, c, masks, train, dtype, seed)

        h = layer_norm(h, d.embd, "ln_f", dtype)
        return mtf.einsum([h, wte], output_shape=[d.batch, d.sequence, d.vocab])


def gpt_step(tokens, step, caches, d, model_config, seed, dtype=None):
    """One token per row, tokens [batch] at `step.position` -> (logits [batch, vocab], new caches).

    The same weights and arithmetic as `gpt`, for incremental decoding: each layer attends over
    its cache (see layers.attention_step) instead of recomputing the sequence.
    """
    c = model_config
    dtype = dtype or mtf.VariableDType(tf.float32)
    with tf.variable_scope("gpt2"):
        wte, wpe = _embedding_tables(tokens.mesh, d, dtype, seed)
        h = mtf.gather(wte, tokens, d.vocab) + mtf.gather(wpe, step.position, d.embed_sequence)
        new_caches = []
        for i, kind in enumerate(c.attention_types):
            with tf.variable_scope("h%d" % i):
                out, cache = attention_step(layer_norm(h, d.embd, "norm_1", dtype), kind, d, c, caches[i], step,
                                            dtype, seed)
                h += out
                h += mlp(layer_norm(h, d.embd, "norm_2", dtype), d, c, False, dtype, seed)
            new_caches.append(cache)
        h = layer_norm(h, d.embd, "ln_f", dtype)
        return mtf.einsum([h, wte], output_shape=[d.batch, d.vocab]), new_caches


def _embedding_tables(mesh, d, dtype, seed):
    wte = mtf.get_variable(mesh, "wte", [d.vocab, d.embd], initializer=normal_initializer(0.02, "wte", seed),
                           dtype=dtype)
    wpe = mtf.get_variable(mesh, "wpe", [d.embed_sequence, d.embd],
                           initializer=normal_initializer(0.01, "wpe", seed), dtype=dtype)
    return wte, wpe


def _block(h, kind, d, c, masks, train, dtype, seed):
    def residual(x):
        x += attention(layer_norm(x, d.embd, "norm_1", dtype), kind, d, c, masks, train, dtype, seed)
        return x + mlp(layer_norm(x, d.embd, "norm_2", dtype), d, c, train, dtype, seed)

    if c.recompute_grad and train:
        return mtf.recompute_grad(residual, [h])
    return residual(h)


def token_losses(logits, labels, d, z_loss):
    """Per-token cross-entropy and z-loss (float32): ℓ = logZ - z_target + z_loss·logZ².

    Returns (mean loss, per-token cross-entropy [batch, sequence]).
    A label >= n_vocab has an all-zero one-hot, so only its z-loss term counts (as the original).
    """
    logits = mtf.to_float(logits)
    log_z = mtf.reduce_logsumexp(logits, d.vocab)
    target_logit = mtf.reduce_sum(logits * mtf.one_hot(labels, d.vocab, dtype=tf.float32),
                                  reduced_dim=d.vocab)
    cross_entropy = log_z - target_logit
    per_token = cross_entropy + z_loss * mtf.square(log_z)
    return mtf.reduce_mean(per_token), cross_entropy

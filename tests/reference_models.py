"""Independent reference implementations of the GPT-Neo forward pass, for tests.

Two oracles, deliberately sharing no code with the project's model:

* :func:`numpy_gpt_neo_logits` -- a plain numpy float64 forward pass written from the
  behavioural spec (GPT-NEO-REFERENCE.md sections 3 and 4), reading weights keyed by
  the mesh-tf checkpoint variable names.
* :func:`hf_logits_from_mesh_tf_checkpoint` -- HuggingFace's own route: the
  ``convert_gpt_neo_mesh_tf_to_pytorch`` script (which uses ``load_tf_weights_in_gpt_neo``)
  followed by ``GPTNeoForCausalLM.from_pretrained`` with eager attention.

Semantics implemented by the numpy oracle (default flags of the original):

* token embedding = one-hot(ids) x wte, so an id outside [0, n_vocab) embeds as zeros;
  plus the learned position table wpe[0..T-1];
* pre-norm residual blocks: h += Attn(LN1(h)); h += MLP(LN2(h));
  an attention type "none" skips attention and norm_1 but still adds the residual
  input, i.e. h = 2h (spec section 3.3, as written in the original);
* LayerNorm over the embedding dim, biased variance, eps 1e-5;
* q/k/v kernels [E, E] with heads-major output columns (head * d + feature), no
  q/k/v biases; attention logits q.k^T with NO 1/sqrt(d) scaling;
  global: key j visible to query i iff j <= i; local with window W: iff i - W < j <= i;
  softmax; output = concat(heads) . o + o_b;
* MLP: c_fc (+bias), tanh-approximated GELU, c_proj (+bias);
* final LayerNorm ln_f, tied output logits = h . wte^T (all n_vocab rows).

and the original's experimental attention and position features (spec 3.2, 3.5), each
written as the spec states it:

* ``axial_pos_emb`` [A, B]: position table = the A x B grid of (axial_wpe_1[a] +
  axial_wpe_2[b]) / 2 flattened row-major, rows 0..T-1 used like wpe;
* ``rotary_emb``: no position table; q and k of every attention layer become
  x.cos + rotate_half(x).sin, angle[p] = p * 10000^(-2i/d) for i < d/2 repeated twice,
  rotate_half(x) = concat(-x2, x1) over the halves of the head features;
* "linear" layers: q softmaxed over its features; causal: k = exp(k), running sums
  S_t = sum_{s<=t} k_s + 1e-6 and C_t = sum_{s<=t} k_s^T v_s (materialised), out_t =
  q_t.C_t / q_t.S_t; not causal (``mlm_training``): k softmaxed over the sequence,
  out = q . sum_t k_t^T v_t;
* ``num_mem_kv`` M: global layers prepend the learned mem_k, mem_v [M, H, d] to their keys
  and values, visible to every query (the working version of the original's idea).

and the original's experimental block features (spec 3.3, 3.6-3.9), as the spec states them
with this project's documented fixes:

* ``macaron``: h += 0.5 * MLP_macaron(h) (un-normalised h) first; the MLP branch is halved;
* ``scalenorm``: pre-norms normalise as LayerNorm, times one scalar g, no bias;
* ``rezero``: no pre-norms; each residual branch times a scalar norm_rezero_{1,2}/g;
* ``mlp_glu``: c_fc to 8 * n_embd columns [value | gate]; value * act(gate) into c_proj;
* ``activation_fn``: every activation of spec 3.7 (:func:`numpy_activation`);
* ``share_parameters``: every layer reads the same weights, "gpt2//..." (the empty scope);
* ``no_weight_tie``: logits = h . linear_out/kernel + linear_out/bias, no ln_f (as the original);
* ``moe_layers``: the layer's MLP is a top-2 mixture of experts (:func:`numpy_moe`);
* losses: cross-entropy + z-loss, and the 1.3-entmax loss (:func:`numpy_entmax_loss`).
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap

import numpy as np

LAYER_NORM_EPSILON = 1e-5
DEFAULT_LOCAL_ATTENTION_RADIUS = 256
_KNOWN_ATTENTION_KINDS = ("global", "local", "linear", "none")
LINEAR_ATTENTION_EPSILON = 1e-6
ROTARY_BASE = 10000.0


# --------------------------------------------------------------------------------------
# config helpers
# --------------------------------------------------------------------------------------


def expand_attention_types(attention_types) -> list[str]:
    """Expand the compressed ``[[pattern_list, repeat_count], ...]`` form.

    Each pair appends ``pattern_list`` ``repeat_count`` times, in order. An already
    expanded flat list of strings is returned unchanged (as a new list).
    """
    attention_types = list(attention_types)
    if all(isinstance(entry, str) for entry in attention_types):
        return attention_types
    expanded: list[str] = []
    for entry in attention_types:
        if len(entry) != 2:
            raise ValueError(f"attention_types entry must be [pattern_list, repeat_count]: {entry!r}")
        pattern, repeat = entry
        if isinstance(pattern, str):
            raise ValueError(f"attention_types pattern must be a list of kinds: {entry!r}")
        for _ in range(int(repeat)):
            expanded.extend(pattern)
    return expanded


def attention_mask(kind: str, T: int, window: int | None = None, causal: bool = True) -> np.ndarray:
    """Boolean visibility matrix ``[T, T]``: ``mask[i, j]`` is True iff query ``i`` sees key ``j``.

    ``kind == "global"``: j <= i (causal); every j when not causal (masked LM).
    ``kind == "local"``: i - window < j <= i (``window`` keys including the query itself); not
    causal: i - window < j <= i + window.
    """
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    if kind == "global":
        return (j <= i) if causal else np.ones((T, T), bool)
    if kind == "local":
        if window is None or int(window) < 1:
            raise ValueError(f"local attention needs a window >= 1, got {window!r}")
        return (i - j < int(window)) & (j <= (i if causal else i + int(window)))
    raise ValueError(f"no attention mask for attention kind {kind!r}")


# --------------------------------------------------------------------------------------
# numpy float64 forward pass
# --------------------------------------------------------------------------------------


def _layer_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    variance = (centred * centred).mean(axis=-1, keepdims=True)  # biased
    return centred / np.sqrt(variance + LAYER_NORM_EPSILON) * g + b


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _masked_softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Softmax over the last axis restricted to positions where ``mask`` is True.

    Every row of ``mask`` must have at least one True entry (the diagonal always is).
    """
    scores = np.where(mask, scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)  # exp(-inf) == 0 for masked keys
    return weights / weights.sum(axis=-1, keepdims=True)


def _get(weights: dict, name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in weights:
        raise KeyError(f"missing weight {name!r}")
    array = np.asarray(weights[name], dtype=np.float64)
    if array.shape != tuple(shape):
        raise ValueError(f"weight {name!r} has shape {array.shape}, expected {tuple(shape)}")
    return array


def numpy_gpt_neo_logits(
    weights: dict[str, np.ndarray], config: dict, input_ids: np.ndarray, balance_losses: list | None = None
) -> np.ndarray:
    """GPT-Neo logits ``[batch, T, n_vocab]`` (float64) for ``input_ids`` ``[batch, T]``.

    ``weights`` is keyed by checkpoint variable names without ``":0"`` (``"gpt2/wte"``,
    ``"gpt2/h0/attn/q"``, ...); ``config`` uses the original's JSON keys. Each MoE layer's
    load-balancing loss (evaluation mode) is appended to ``balance_losses`` if given.
    """
    n_embd = int(config["n_embd"])
    n_head = int(config["n_head"])
    n_layer = int(config["n_layer"])
    n_ctx = int(config["n_ctx"])
    n_vocab = int(config["n_vocab"])
    if n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} is not divisible by n_head {n_head}")
    kinds = expand_attention_types(config["attention_types"])
    if len(kinds) != n_layer:
        raise ValueError(f"attention_types expands to {len(kinds)} layers, n_layer is {n_layer}")
    for kind in kinds:
        if kind not in _KNOWN_ATTENTION_KINDS:
            raise NotImplementedError(f"attention type {kind!r} is not supported by this reference")

    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, T], got shape {ids.shape}")
    T = ids.shape[1]
    if T > n_ctx:
        raise ValueError(f"sequence length {T} exceeds n_ctx {n_ctx}")
    ids = ids.astype(np.int64)

    # Embeddings: one-hot(ids) x wte -> ids outside [0, n_vocab) give a zero vector.
    wte = _get(weights, "gpt2/wte", (n_vocab, n_embd))
    in_vocab = (ids >= 0) & (ids < n_vocab)
    h = np.where(in_vocab[..., None], wte[np.where(in_vocab, ids, 0)], 0.0)
    positions = numpy_position_table(weights, config)
    if positions is not None:
        h = h + positions[:T][None, :, :]

    for layer, kind in enumerate(kinds):
        p = "gpt2/" if config.get("share_parameters") else f"gpt2/h{layer}"
        if config.get("macaron"):
            h = h + 0.5 * numpy_mlp(h, weights, f"{p}/mlp_macaron", config)
        if kind == "none":
            branch = h  # spec 3.3: attention and norm_1 skipped, residual still added
        else:
            branch = numpy_attention(_numpy_prenorm(h, weights, f"{p}/norm_1", config), weights, p, kind, config)
        h = h + _numpy_rezero(branch, weights, f"{p}/norm_rezero_1", config)

        x = _numpy_prenorm(h, weights, f"{p}/norm_2", config)
        if layer in (config.get("moe_layers") or ()):
            out, balance = numpy_moe(x, weights, p, config)
            if balance_losses is not None:
                balance_losses.append(balance)
        else:
            out = numpy_mlp(x, weights, f"{p}/mlp", config)
        if config.get("macaron"):
            out = 0.5 * out
        h = h + _numpy_rezero(out, weights, f"{p}/norm_rezero_2", config)

    if config.get("no_weight_tie"):  # spec 3.9: no final LayerNorm
        out = "gpt2/wte_final_linear/conv1d_main/linear_out"
        return h @ _get(weights, f"{out}/kernel", (n_embd, n_vocab)) + _get(weights, f"{out}/bias", (n_vocab,))
    h = _layer_norm(h, _get(weights, "gpt2/ln_f/g", (n_embd,)), _get(weights, "gpt2/ln_f/b", (n_embd,)))
    return h @ wte.T


def _numpy_prenorm(h: np.ndarray, weights: dict, name: str, config: dict) -> np.ndarray:
    """A block's pre-norm ``name`` ("gpt2/h0/norm_1"): LayerNorm, scalenorm's scalar gain, or none (ReZero)."""
    n_embd = h.shape[-1]
    if config.get("rezero"):
        return h
    if config.get("scalenorm"):
        return _layer_norm(h, _get(weights, f"{name}/g", ()), 0.0)
    return _layer_norm(h, _get(weights, f"{name}/g", (n_embd,)), _get(weights, f"{name}/b", (n_embd,)))


def _numpy_rezero(branch: np.ndarray, weights: dict, name: str, config: dict) -> np.ndarray:
    return branch * _get(weights, f"{name}/g", ()) if config.get("rezero") else branch


def _activation_params(weights: dict, scope: str) -> list:
    """The learned scalars ``<scope>/activation-0, -1, ...`` in creation order."""
    params = []
    while f"{scope}/activation-{len(params)}" in weights:
        params.append(_get(weights, f"{scope}/activation-{len(params)}", ()))
    return params


def numpy_mlp(x: np.ndarray, weights: dict, scope: str, config: dict) -> np.ndarray:
    """The MLP of ``scope`` ("gpt2/h0/mlp"): c_proj(act(c_fc(x))), or with ``mlp_glu``
    c_proj(value * act(gate)) where c_fc's 8 * n_embd columns are [value | gate]."""
    n_embd = x.shape[-1]
    hidden_size = 4 * n_embd
    columns = 2 * hidden_size if config.get("mlp_glu") else hidden_size
    name = config.get("activation_fn", "gelu")
    params = _activation_params(weights, scope)
    seed = int(config.get("seed", 1))
    hidden = x @ _get(weights, f"{scope}/conv1d_main/c_fc/kernel", (n_embd, columns))
    hidden = hidden + _get(weights, f"{scope}/conv1d_main/c_fc/bias", (columns,))
    if config.get("mlp_glu"):
        hidden = hidden[..., :hidden_size] * numpy_activation(name, hidden[..., hidden_size:], params, seed)
    else:
        hidden = numpy_activation(name, hidden, params, seed)
    out = hidden @ _get(weights, f"{scope}/conv1d_main/c_proj/kernel", (hidden_size, n_embd))
    return out + _get(weights, f"{scope}/conv1d_main/c_proj/bias", (n_embd,))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
    return np.logaddexp(0.0, x)


def numpy_activation(name: str, x: np.ndarray, params=(), seed: int = 1) -> np.ndarray:
    """Spec 3.7's activation ``name`` of x; ``params`` are its learned scalars in the original's
    creation order. Fixes: tanhshrink runs, proottanh raises |x| (not x) to its power, rrelu's
    slope s is ``random.Random(seed).random()`` (the original drew it at every graph build)."""
    params = list(params)
    if len(params) != NUMPY_ACTIVATION_PARAMS.get(name, 0):
        raise ValueError(f"{name} takes {NUMPY_ACTIVATION_PARAMS.get(name, 0)} scalars, got {len(params)}")
    p = [np.float64(v) for v in params]
    if name == "aria":  # x (a + b / (softplus(c) + d exp(e x)^(1 / (softplus(f) + 1))))
        a, b, c, d, e, f = p
        return x * (a + b / (_softplus(c) + d * np.exp(e * x) ** (1.0 / (_softplus(f) + 1.0))))
    if name == "prelu":
        return np.where(x > 0, x, p[0] * x)
    if name == "parcsinh":  # a arcsinh(x (softplus(b) + 1))
        return p[0] * np.arcsinh(x * (_softplus(p[1]) + 1.0))
    if name == "psoftplus":  # a softplus(b x) + c
        return p[0] * _softplus(p[1] * x) + p[2]
    if name == "proottanh":  # (|x|^(softplus(a) + 2) + softplus(b) + 1)^(1 / (softplus(c) + 3)) tanh x
        a, b, c = p
        return (np.abs(x) ** (_softplus(a) + 2.0) + _softplus(b) + 1.0) ** (1.0 / (_softplus(c) + 3.0)) * np.tanh(x)
    if name == "rrelu":
        s = random.Random(seed).random()
        return (s * np.abs(x) + x) / (1.0 + s)
    if name in ("softmax", "logsoftmax"):
        shifted = x - x.max(axis=-1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        return np.exp(log_p) if name == "softmax" else log_p
    return _NUMPY_ACTIVATIONS[name](x)


_SELU_ALPHA, _SELU_SCALE = 1.6732632423543772, 1.0507009873554805
_NUMPY_ACTIVATIONS = {
    "gelu": _gelu_tanh,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "selu": lambda x: _SELU_SCALE * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "abs": np.abs,
    "sin": np.sin,
    "cos": np.cos,
    "sign": np.sign,
    "silu": lambda x: x * _sigmoid(x),
    "softplus": _softplus,
    "lrelu001": lambda x: np.where(x > 0, x, 0.01 * x),
    "lrelu020": lambda x: np.where(x > 0, x, 0.2 * x),
    "id": lambda x: x,
    "triangle_relax": lambda x: np.sin(x) - np.sin(3 * x) / 9 + np.sin(5 * x) / 25 - np.sin(7 * x) / 49,
    "square_relax": lambda x: np.cos(x) - np.cos(3 * x) / 3 + np.cos(5 * x) / 5 - np.cos(7 * x) / 7,
    "spike": lambda x: 1.0 / (1.0 + x**2),
    "spike2": lambda x: np.exp(-(x**2)),
    "tanhshrink": lambda x: x - np.tanh(x),
    "softsign": lambda x: x / (np.abs(x) + 1.0),
    "bipolarsigmoid": lambda x: 2.0 * _sigmoid(x) - 1.0,
    # as written in the original: x / (1 + e^x) above 0 (the paper has x * sigmoid(x))
    "elish": lambda x: np.where(x > 0, x / (1.0 + np.exp(np.minimum(x, 50.0))),
                                np.expm1(np.minimum(x, 0.0)) * _sigmoid(x)),
    "arcsinh": np.arcsinh,
    "maxsig": lambda x: np.maximum(x, _sigmoid(x)),
    "cosid": lambda x: np.cos(x) - x,
    "minsin": lambda x: np.minimum(x, np.sin(x)),
    "maxtanh": lambda x: np.maximum(x, np.tanh(x)),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "tanhexp": lambda x: x * np.tanh(np.exp(x)),
    "lisht": lambda x: x * np.tanh(x),
    "seagull": lambda x: np.log1p(x**2),
    "snake": lambda x: x + np.sin(x) ** 2,
    "roottanh": lambda x: np.cbrt(x**2 + 1.0) * np.tanh(x),
    "softplusmone": lambda x: _softplus(x) - 1.0,
}
NUMPY_ACTIVATION_PARAMS = {"aria": 6, "prelu": 1, "parcsinh": 2, "psoftplus": 3, "proottanh": 3}
ACTIVATION_NAMES = tuple(_NUMPY_ACTIVATIONS) + ("softmax", "logsoftmax", "rrelu") + tuple(NUMPY_ACTIVATION_PARAMS)

# mesh-tf's MoE defaults with the original's overrides (spec 3.8)
MOE_DEFAULTS = {"moe_num_experts": 16, "moe_loss_coef": 1e-2, "moe_capacity_factor_eval": 2.0,
                "moe_hidden_size": 4096, "moe_group_size": 1024, "moe_second_policy_eval": "random",
                "moe_second_threshold_eval": 0.2, "moe_min_expert_capacity": 1}


def numpy_moe(x: np.ndarray, weights: dict, prefix: str, config: dict) -> tuple[np.ndarray, float]:
    """Evaluation-mode top-2 mixture of experts of x [B, T, E] with the weights under ``prefix``:
    (output [B, T, E], load-balancing loss).

    Written token by token: each row's tokens form groups of the largest divisor of T that is at
    most moe_group_size; in a group, tokens in order take the next free slot of their best expert,
    then (for the second-expert policies "all" and "threshold") of their second best; an expert has
    C = max(min(S, floor(S * capacity_factor / experts)), min_capacity) slots and a token that finds
    them full skips it. Output = sum over its experts of gate * relu(x wi_e) wo_e with the two gates
    renormalised to sum to 1; loss = coef * E^2 * mean over groups and experts of (fraction of the
    group whose best expert is e) * (mean gate of e).
    """
    p = dict(MOE_DEFAULTS, **(config.get("moe_params") or {}))
    policy, threshold = p["moe_second_policy_eval"], p["moe_second_threshold_eval"]
    if policy not in ("all", "none", "threshold") or p.get("moe_use_second_place_loss"):
        raise NotImplementedError(f"the reference has no second-expert policy {policy!r} / second place loss")
    batch, T, n_embd = x.shape
    experts, hidden_size = p["moe_num_experts"], p["moe_hidden_size"]
    gate_kernel = _get(weights, f"{prefix}/top_2_gating/kernel", (n_embd, experts))
    wi = _get(weights, f"{prefix}/wi/kernel", (experts, n_embd, hidden_size))
    wo = _get(weights, f"{prefix}/wo/kernel", (experts, hidden_size, n_embd))
    size = max(s for s in range(1, min(T, p["moe_group_size"]) + 1) if T % s == 0)
    capacity = max(min(size, int(size * p["moe_capacity_factor_eval"] / experts)), p["moe_min_expert_capacity"])
    activation = config.get("moe_activation", "relu")

    out = np.zeros_like(x, dtype=np.float64)
    balance = []
    for b in range(batch):
        for start in range(0, T, size):
            tokens = x[b, start:start + size]
            logits = tokens @ gate_kernel
            gates = np.exp(logits - logits.max(-1, keepdims=True))
            gates /= gates.sum(-1, keepdims=True)
            order = np.argsort(-gates, axis=-1)
            first, second = order[:, 0], order[:, 1]
            balance.append(np.mean(np.bincount(first, minlength=experts) / size * gates.mean(0)) * experts**2)
            g1, g2 = gates[np.arange(size), first], gates[np.arange(size), second]
            g1, g2 = g1 / (g1 + g2 + 1e-9), g2 / (g1 + g2 + 1e-9)
            taken = np.zeros(experts, int)
            routes = []
            for t in range(size):
                if taken[first[t]] < capacity:
                    routes.append((t, first[t], g1[t]))
                taken[first[t]] += 1
            taken = np.minimum(taken, capacity)  # second choices queue after the first choices that fit
            for t in range(size):
                if policy == "none" or (policy == "threshold" and g2[t] <= threshold):
                    continue
                if taken[second[t]] < capacity:
                    routes.append((t, second[t], g2[t]))
                taken[second[t]] += 1
            for t, e, gate in routes:
                expert = numpy_activation(activation, tokens[t] @ wi[e]) @ wo[e]
                out[b, start + t] += gate * expert
    return out, p["moe_loss_coef"] * float(np.mean(balance))


def numpy_token_losses(logits: np.ndarray, labels: np.ndarray, z_loss: float) -> tuple[np.ndarray, np.ndarray]:
    """Spec 3.9 per position: (cross-entropy logZ - z_target, that + z_loss * logZ^2); a label
    outside [0, vocab) has no target term."""
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    log_z = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
    inside = (labels >= 0) & (labels < logits.shape[-1])
    target = np.where(inside, np.take_along_axis(logits, np.where(inside, labels, 0)[..., None], -1)[..., 0], 0.0)
    cross_entropy = log_z - target
    return cross_entropy, cross_entropy + z_loss * log_z**2


def numpy_entmax(z: np.ndarray, alpha: float = 1.3) -> np.ndarray:
    """alpha-entmax over the last axis: p = [(alpha-1) z - tau]_+^(1/(alpha-1)), tau with sum p = 1
    (found by bisection to float64 precision)."""
    z = (alpha - 1.0) * np.asarray(z, np.float64)
    low = z.max(-1, keepdims=True) - 1.0  # sum p >= 1 here
    high = z.max(-1, keepdims=True)  # sum p = 0 here
    for _ in range(200):
        middle = (low + high) / 2
        big = (np.maximum(z - middle, 0.0) ** (1.0 / (alpha - 1.0))).sum(-1, keepdims=True) >= 1.0
        low, high = np.where(big, middle, low), np.where(big, high, middle)
    p = np.maximum(z - low, 0.0) ** (1.0 / (alpha - 1.0))
    return p / p.sum(-1, keepdims=True)


def numpy_entmax_loss(logits: np.ndarray, labels: np.ndarray, alpha: float = 1.3) -> np.ndarray:
    """The entmax loss (Peters et al. 2019) per position: (p - e_y).z + (1 - sum p^alpha) / (alpha (alpha - 1))."""
    z = np.asarray(logits, np.float64)
    p = numpy_entmax(z, alpha)
    target = np.eye(z.shape[-1])[labels]
    return ((p - target) * z).sum(-1) + (1.0 - (p**alpha).sum(-1)) / (alpha * (alpha - 1.0))


def numpy_position_table(weights: dict[str, np.ndarray], config: dict) -> np.ndarray | None:
    """The additive position table [positions, n_embd] (spec 3.2), None with rotary embeddings."""
    n_embd = int(config["n_embd"])
    if config.get("rotary_emb"):
        return None
    if config.get("axial_pos_emb"):
        rows, columns = (int(n) for n in config["axial_pos_emb"])
        first = _get(weights, "gpt2/axial_wpe_1", (rows, n_embd))
        second = _get(weights, "gpt2/axial_wpe_2", (columns, n_embd))
        grid = (first[:, None, :] + second[None, :, :]) / 2  # [A, B, E]
        return grid.reshape(rows * columns, n_embd)  # row-major: position a * B + b
    return _get(weights, "gpt2/wpe", (int(config["n_ctx"]), n_embd))


def _rotary(x: np.ndarray) -> np.ndarray:
    """x [B, H, T, d] turned as the spec's rotary embedding: x.cos + rotate_half(x).sin."""
    T, d = x.shape[-2:]
    inverse_frequency = ROTARY_BASE ** (-2.0 * np.arange(d // 2) / d)
    angles = np.arange(T)[:, None] * inverse_frequency[None, :]
    angles = np.concatenate([angles, angles], axis=-1)  # [T, d]
    rotated_half = np.concatenate([-x[..., d // 2:], x[..., : d // 2]], axis=-1)
    return x * np.cos(angles) + rotated_half * np.sin(angles)


def _numpy_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _linear_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    """q, k, v [B, H, T, d] -> [B, H, T, d], the original's linear attention (spec 3.5)."""
    q = _numpy_softmax(q, axis=-1)
    if not causal:
        k = _numpy_softmax(k, axis=-2)
        return q @ (k.transpose(0, 1, 3, 2) @ v)
    k = np.exp(k)
    sums = np.cumsum(k, axis=2) + LINEAR_ATTENTION_EPSILON  # S_t [B, H, T, d]
    contexts = np.cumsum(k[..., :, None] * v[..., None, :], axis=2)  # C_t [B, H, T, d, d]
    numerator = np.einsum("bhti,bhtij->bhtj", q, contexts)
    return numerator / np.einsum("bhti,bhti->bht", q, sums)[..., None]


def numpy_attention(x: np.ndarray, weights: dict[str, np.ndarray], prefix: str, kind: str, config: dict) -> np.ndarray:
    """One layer's attention (q/k/v, the kind's attention, o and o_b; spec 3.4, 3.5) of the
    normalised input x [B, T, E], with the weights of layer ``prefix`` ("gpt2/h0")."""
    n_embd, n_head = int(config["n_embd"]), int(config["n_head"])
    d = n_embd // n_head
    batch, T, _ = x.shape
    heads = {}
    for name in ("q", "k", "v"):
        kernel = _get(weights, f"{prefix}/attn/{name}", (n_embd, n_embd))
        # [B, T, E] -> [B, T, H, d] (column = head * d + feature) -> [B, H, T, d]
        heads[name] = (x @ kernel).reshape(batch, T, n_head, d).transpose(0, 2, 1, 3)
    q, k, v = heads["q"], heads["k"], heads["v"]
    if config.get("rotary_emb"):
        q, k = _rotary(q), _rotary(k)
    if kind == "linear":
        context = _linear_attention(q, k, v, causal=not config.get("mlm_training"))
    else:
        window = int(config.get("local_attention_radius", DEFAULT_LOCAL_ATTENTION_RADIUS))
        mask = attention_mask(kind, T, window, causal=not config.get("mlm_training"))
        memory = int(config.get("num_mem_kv", 0)) if kind == "global" else 0
        if memory:
            mem_k, mem_v = (_get(weights, f"{prefix}/attn/attention/{name}", (memory, n_head, d)).transpose(1, 0, 2)
                            for name in ("mem_k", "mem_v"))
            k = np.concatenate([np.broadcast_to(mem_k, (batch,) + mem_k.shape), k], axis=2)
            v = np.concatenate([np.broadcast_to(mem_v, (batch,) + mem_v.shape), v], axis=2)
            mask = np.concatenate([np.ones((T, memory), bool), mask], axis=1)
        scores = q @ k.transpose(0, 1, 3, 2)  # no 1/sqrt(d)
        context = _masked_softmax(scores, mask[None, None]) @ v
    context = context.transpose(0, 2, 1, 3).reshape(batch, T, n_embd)
    o = _get(weights, f"{prefix}/attn/o", (n_embd, n_embd))
    o_b = _get(weights, f"{prefix}/attn/compute_output_bias/o_b", (n_embd,))
    return context @ o + o_b


# --------------------------------------------------------------------------------------
# HuggingFace route
# --------------------------------------------------------------------------------------

_CONVERT_SCRIPT = textwrap.dedent(
    """
    import sys
    from transformers.models.gpt_neo.convert_gpt_neo_mesh_tf_to_pytorch import convert_tf_checkpoint_to_pytorch
    convert_tf_checkpoint_to_pytorch(
        tf_checkpoint_path=sys.argv[1], config_file=sys.argv[2], pytorch_dump_path=sys.argv[3]
    )
    """
)


def _run_hf_converter(checkpoint_prefix: str, config_file: str, dump_path: str) -> None:
    """Run HuggingFace's mesh-tf -> PyTorch converter in a fresh Python process.

    ``load_tf_weights_in_gpt_neo`` calls ``tf.dtypes.cast(...).numpy()``, which needs eager
    execution, and the test session has TensorFlow in graph mode (``meshtf`` disables v2
    behaviour at import, irreversibly).
    """
    result = subprocess.run(
        [sys.executable, "-c", _CONVERT_SCRIPT, checkpoint_prefix, config_file, dump_path],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"HF converter subprocess failed (exit {result.returncode}):\n"
            f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
        )


def _expected_hf_state_from_checkpoint(checkpoint_prefix: str, vocab_size: int) -> dict[str, np.ndarray]:
    """Our own (independent) mapping of checkpoint variables to HF parameter names, used
    only to verify that the converted model really holds the checkpoint's weights.
    """
    import tensorflow as tf

    reader = tf.train.load_checkpoint(checkpoint_prefix)  # numpy reader, works in graph mode too
    expected: dict[str, np.ndarray] = {}
    for name in reader.get_variable_to_shape_map():
        if name == "global_step" or "adam" in name:
            continue
        if not name.startswith("gpt2/"):
            raise ValueError(f"unexpected checkpoint variable {name!r} (HF's loader cannot place it)")
        array = np.asarray(reader.get_tensor(name), dtype=np.float32)
        parts = name[len("gpt2/") :].split("/")
        if parts in (["wte"], ["wpe"]):
            key = f"transformer.{parts[0]}.weight"
            if parts == ["wte"]:
                array = array[:vocab_size]
        elif parts[0] == "ln_f":
            key = "transformer.ln_f." + {"g": "weight", "b": "bias"}[parts[1]]
        elif parts[0].startswith("h") and parts[0][1:].isdigit():
            block = f"transformer.h.{int(parts[0][1:])}"
            rest = "/".join(parts[1:])
            table = {
                "norm_1/g": ("ln_1.weight", False),
                "norm_1/b": ("ln_1.bias", False),
                "norm_2/g": ("ln_2.weight", False),
                "norm_2/b": ("ln_2.bias", False),
                "attn/q": ("attn.attention.q_proj.weight", True),
                "attn/k": ("attn.attention.k_proj.weight", True),
                "attn/v": ("attn.attention.v_proj.weight", True),
                "attn/o": ("attn.attention.out_proj.weight", True),
                "attn/compute_output_bias/o_b": ("attn.attention.out_proj.bias", False),
                "mlp/conv1d_main/c_fc/kernel": ("mlp.c_fc.weight", True),
                "mlp/conv1d_main/c_fc/bias": ("mlp.c_fc.bias", False),
                "mlp/conv1d_main/c_proj/kernel": ("mlp.c_proj.weight", True),
                "mlp/conv1d_main/c_proj/bias": ("mlp.c_proj.bias", False),
            }
            if rest not in table:
                raise ValueError(f"unexpected checkpoint variable {name!r}")
            suffix, transpose = table[rest]
            key = f"{block}.{suffix}"
            if transpose:
                array = array.T  # [in, out] -> torch Linear [out, in]
        else:
            raise ValueError(f"unexpected checkpoint variable {name!r}")
        expected[key] = array
    return expected


def hf_logits_from_mesh_tf_checkpoint(
    checkpoint_prefix: str, config: dict, input_ids: np.ndarray, workdir: str
) -> np.ndarray:
    """Logits ``[batch, T, vocab_size]`` (float32 numpy) from HuggingFace's converter + GPTNeoForCausalLM."""
    import torch

    model = hf_model_from_mesh_tf_checkpoint(checkpoint_prefix, config, workdir)
    with torch.no_grad():
        logits = model(torch.as_tensor(np.asarray(input_ids), dtype=torch.long)).logits
    return logits.numpy()


def hf_model_from_mesh_tf_checkpoint(checkpoint_prefix: str, config: dict, workdir: str):
    """HuggingFace's converter + ``GPTNeoForCausalLM.from_pretrained`` (eager attention, float32, eval).

    The converter only reads n_embd, n_layer, n_head, attention_types, n_positions and the
    three dropouts; vocab_size (50257) and window_size (256) stay at GPTNeoConfig defaults.
    Raises if any HF parameter does not hold exactly the checkpoint's value.
    """
    import torch
    from transformers import GPTNeoForCausalLM

    os.makedirs(workdir, exist_ok=True)
    converter_config = {
        "n_embd": int(config["n_embd"]),
        "n_layer": int(config["n_layer"]),
        "n_head": int(config["n_head"]),
        "attention_types": config["attention_types"],
        "n_positions": int(config["n_ctx"]),
        "res_dropout": float(config.get("res_dropout", 0.0)),
        "embed_dropout": float(config.get("embed_dropout", 0.0)),
        "attn_dropout": float(config.get("attn_dropout", 0.0)),
    }
    config_file = os.path.join(workdir, "mesh_tf_config.json")
    with open(config_file, "w") as f:
        json.dump(converter_config, f)
    dump_path = os.path.join(workdir, "hf")

    _run_hf_converter(checkpoint_prefix, config_file, dump_path)

    model, loading_info = GPTNeoForCausalLM.from_pretrained(
        dump_path, attn_implementation="eager", torch_dtype=torch.float32, output_loading_info=True
    )
    model.eval()
    problems = {k: v for k, v in loading_info.items() if v}
    if problems:
        raise RuntimeError(f"HF model did not load cleanly from {dump_path}: {problems}")

    # Every HF parameter must hold exactly the checkpoint's value (the loader itself is
    # silent about parameters it never filled, which would keep their random init).
    expected = _expected_hf_state_from_checkpoint(checkpoint_prefix, model.config.vocab_size)
    params = dict(model.named_parameters())  # tied lm_head.weight is deduplicated away
    unfilled = sorted(set(params) - set(expected))
    unused = sorted(set(expected) - set(params))
    if unfilled or unused:
        raise RuntimeError(f"HF/checkpoint parameter mismatch: not in checkpoint {unfilled}, not in HF {unused}")
    for key, param in params.items():
        actual = param.detach().cpu().numpy()
        if actual.shape != expected[key].shape or not np.array_equal(actual, expected[key]):
            raise RuntimeError(f"HF parameter {key} does not hold the checkpoint's value")
    if model.get_output_embeddings().weight.data_ptr() != model.transformer.wte.weight.data_ptr():
        raise RuntimeError("HF lm_head is not tied to wte")
    window = int(config.get("local_attention_radius", DEFAULT_LOCAL_ATTENTION_RADIUS))
    if "local" in expand_attention_types(config["attention_types"]) and model.config.window_size != window:
        raise ValueError(
            f"HF window_size {model.config.window_size} differs from local_attention_radius; "
            "the converter cannot set it"
        )
    return model

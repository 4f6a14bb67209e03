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
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np

LAYER_NORM_EPSILON = 1e-5
DEFAULT_LOCAL_ATTENTION_RADIUS = 256
_KNOWN_ATTENTION_KINDS = ("global", "local", "none")


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


def attention_mask(kind: str, T: int, window: int | None = None) -> np.ndarray:
    """Boolean visibility matrix ``[T, T]``: ``mask[i, j]`` is True iff query ``i`` sees key ``j``.

    ``kind == "global"``: j <= i (causal).
    ``kind == "local"``: i - window < j <= i (``window`` keys including the query itself).
    """
    i = np.arange(T)[:, None]
    j = np.arange(T)[None, :]
    causal = j <= i
    if kind == "global":
        return causal
    if kind == "local":
        if window is None or int(window) < 1:
            raise ValueError(f"local attention needs a window >= 1, got {window!r}")
        return causal & (i - j < int(window))
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


def numpy_gpt_neo_logits(weights: dict[str, np.ndarray], config: dict, input_ids: np.ndarray) -> np.ndarray:
    """GPT-Neo logits ``[batch, T, n_vocab]`` (float64) for ``input_ids`` ``[batch, T]``.

    ``weights`` is keyed by checkpoint variable names without ``":0"`` (``"gpt2/wte"``,
    ``"gpt2/h0/attn/q"``, ...); ``config`` uses the original's JSON keys.
    """
    n_embd = int(config["n_embd"])
    n_head = int(config["n_head"])
    n_layer = int(config["n_layer"])
    n_ctx = int(config["n_ctx"])
    n_vocab = int(config["n_vocab"])
    window = int(config.get("local_attention_radius", DEFAULT_LOCAL_ATTENTION_RADIUS))
    if n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} is not divisible by n_head {n_head}")
    d = n_embd // n_head
    kinds = expand_attention_types(config["attention_types"])
    if len(kinds) != n_layer:
        raise ValueError(f"attention_types expands to {len(kinds)} layers, n_layer is {n_layer}")
    for kind in kinds:
        if kind not in _KNOWN_ATTENTION_KINDS:
            raise NotImplementedError(f"attention type {kind!r} is not supported by this reference")

    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, T], got shape {ids.shape}")
    batch, T = ids.shape
    if T > n_ctx:
        raise ValueError(f"sequence length {T} exceeds n_ctx {n_ctx}")
    ids = ids.astype(np.int64)

    # Embeddings: one-hot(ids) x wte -> ids outside [0, n_vocab) give a zero vector.
    wte = _get(weights, "gpt2/wte", (n_vocab, n_embd))
    wpe = _get(weights, "gpt2/wpe", (n_ctx, n_embd))
    in_vocab = (ids >= 0) & (ids < n_vocab)
    tok = np.where(in_vocab[..., None], wte[np.where(in_vocab, ids, 0)], 0.0)
    h = tok + wpe[:T][None, :, :]

    masks = {kind: attention_mask(kind, T, window) for kind in set(kinds) if kind != "none"}

    for layer, kind in enumerate(kinds):
        p = f"gpt2/h{layer}"
        if kind == "none":
            h = h + h  # spec 3.3: attention and norm_1 skipped, residual still added
        else:
            x = _layer_norm(h, _get(weights, f"{p}/norm_1/g", (n_embd,)), _get(weights, f"{p}/norm_1/b", (n_embd,)))
            heads = {}
            for name in ("q", "k", "v"):
                kernel = _get(weights, f"{p}/attn/{name}", (n_embd, n_embd))
                # [B, T, E] -> [B, T, H, d] (column = head * d + feature) -> [B, H, T, d]
                heads[name] = (x @ kernel).reshape(batch, T, n_head, d).transpose(0, 2, 1, 3)
            scores = heads["q"] @ heads["k"].transpose(0, 1, 3, 2)  # no 1/sqrt(d)
            probs = _masked_softmax(scores, masks[kind][None, None])
            context = (probs @ heads["v"]).transpose(0, 2, 1, 3).reshape(batch, T, n_embd)
            o = _get(weights, f"{p}/attn/o", (n_embd, n_embd))
            o_b = _get(weights, f"{p}/attn/compute_output_bias/o_b", (n_embd,))
            h = h + (context @ o + o_b)

        x = _layer_norm(h, _get(weights, f"{p}/norm_2/g", (n_embd,)), _get(weights, f"{p}/norm_2/b", (n_embd,)))
        mlp = f"{p}/mlp/conv1d_main"
        hidden = x @ _get(weights, f"{mlp}/c_fc/kernel", (n_embd, 4 * n_embd))
        hidden = _gelu_tanh(hidden + _get(weights, f"{mlp}/c_fc/bias", (4 * n_embd,)))
        out = hidden @ _get(weights, f"{mlp}/c_proj/kernel", (4 * n_embd, n_embd))
        h = h + (out + _get(weights, f"{mlp}/c_proj/bias", (n_embd,)))

    h = _layer_norm(h, _get(weights, "gpt2/ln_f/g", (n_embd,)), _get(weights, "gpt2/ln_f/b", (n_embd,)))
    return h @ wte.T


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

"""FLOPs per token of a GPT-Neo model, and the peak FLOP/s of the devices it trains on (for MFU).

Model FLOPs follow the usual convention (Kaplan et al. 2020; PaLM's MFU, Chowdhery et al. 2022):
a multiply-add is 2 FLOPs, the backward pass costs twice the forward, and only the work the
model needs counts, not what the implementation happens to do:

- matmuls: 2·N per token forward, N = `matmul_params`. Biases, LayerNorms, GELU, softmax, the
  loss and the optimizer are elementwise work and not counted. Neither are the token-embedding
  lookup (a row lookup, not a matmul, even though mesh-tf computes it as a one-hot matmul, 2·V·D
  per token forward and again for wte's gradient) and the position embeddings (an add).
- attention: q·kᵀ and weights·v, 2·n_embd FLOPs each per (query, key) pair the causal mask
  keeps: a global layer counts T(T+1)/2 pairs (half the full T×T, plus the diagonal), a local
  layer only the keys of its window, plus `num_mem_kv` memory keys in a global layer. The
  masked-out pairs our implementation also computes (global layers compute all T×T, local ones
  blocks of 2L keys) are not counted. A linear layer counts its recurrence (per head and token,
  φ(k)ᵀv and q·Σφ(k)ᵀv, head_size² multiply-adds each: as many as head_size keys), not the
  quadratic form it trains with; a "none" layer has no attention and no q, k, v, o.
- training = forward + backward = 3 × forward.

Hardware FLOPs add what recompute_grad does again: the forward pass of every block (not the
output projection) is recomputed in the backward pass.

A distillation step (trainer/distill.py) also runs the teacher's forward pass (1 × its forward, no
backward), which counts in both: it is work the step needs. `step_flops_per_token` and
`step_hardware_flops_per_token` are a config's training step's figures.
"""
import argparse
import re
from dataclasses import dataclass
from typing import Optional

from ..meshtf import tf

# Peak dense matmul TFLOP/s of ONE TensorFlow device (one mesh position), by the dtype the matrix
# units compute in. Vendor figures, no sparsity.
PEAK_TFLOPS = {
    # Cloud TPU documentation (cloud.google.com/tpu/docs/system-architecture-tpu-vm and the
    # per-version pages), bf16 per CHIP: v2 45, v3 123, v4 275, v5e 197, v5p 459. A v2/v3 chip has
    # two TensorCores that TensorFlow shows as two devices, so a device (core) gets half of the
    # chip; a v4/v5p chip's two TensorCores form one "megacore" device; a v5e chip has one core.
    "v2": {"bfloat16": 22.5},
    "v3": {"bfloat16": 61.5},
    "v4": {"bfloat16": 275.0},
    "v5e": {"bfloat16": 197.0},
    "v5p": {"bfloat16": 459.0},
    # NVIDIA datasheets, per GPU, dense tensor-core figures (the datasheets' headline figures for
    # A100/H100 assume 2:4 sparsity and are twice these); "float32" is the CUDA cores' FP32 rate.
    # V100 and T4 have no bfloat16 (or TF32) tensor cores.
    "a100": {"bfloat16": 312.0, "float16": 312.0, "tfloat32": 156.0, "float32": 19.5},
    "h100": {"bfloat16": 989.4, "float16": 989.4, "tfloat32": 494.7, "float32": 66.9},  # SXM5
    "h100-pcie": {"bfloat16": 756.5, "float16": 756.5, "tfloat32": 378.0, "float32": 51.2},
    "v100": {"float16": 125.0, "float32": 15.7},  # SXM2
    "v100-pcie": {"float16": 112.0, "float32": 14.0},
    "t4": {"float16": 65.0, "float32": 8.1},
}
TPUS = ("v2", "v3", "v4", "v5e", "v5p")
# GPU model names as TensorFlow reports them ("NVIDIA A100-SXM4-40GB", "Tesla V100-PCIE-16GB",
# "NVIDIA H100 80GB HBM3", "Tesla T4") -> PEAK_TFLOPS key; the first match wins.
GPU_MODELS = ((r"H100.*PCIE", "h100-pcie"), (r"H100", "h100"), (r"V100.*PCIE", "v100-pcie"), (r"V100", "v100"),
              (r"A100", "a100"), (r"\bT4\b", "t4"))


# ---------------------------------------------------------------------------------------------
# FLOPs per token


def matmul_params(model_config):
    """N: the weights that multiply activations, per token, in the forward pass.

    Per layer the attention's q, k, v, o (4·D², not in "none" layers) and the MLP's c_fc and
    c_proj (2·4·D²); then the output projection, which is wte itself (D·V, tied). The embedding
    tables as lookups, biases, LayerNorm gains and memory key/values are not counted.
    """
    c = model_config
    attention_layers = sum(kind != "none" for kind in c.attention_types)
    return (8 * c.n_layer + 4 * attention_layers) * c.n_embd ** 2 + c.n_embd * c.n_vocab


def attended_keys(model_config, kind):
    """Keys a query attends to, averaged over the n_ctx positions (the pairs the mask keeps / T).

    Query p sees min(p + 1, window) keys; the window of a global layer is the whole context,
    whose queries also see every memory key. Linear and none layers: see the module docstring.
    """
    c = model_config
    if kind == "none":
        return 0
    if kind == "linear":
        return c.head_size
    window = {"global": c.n_ctx, "local": min(c.local_attention_radius, c.n_ctx)}[kind]
    pairs = window * (window + 1) // 2 + (c.n_ctx - window) * window
    return pairs / c.n_ctx + (c.num_mem_kv if kind == "global" else 0)


def attention_flops_per_token(model_config):
    """Forward q·kᵀ and weights·v: 2·n_embd FLOPs each per attended key, summed over layers."""
    c = model_config
    return sum(4 * c.n_embd * attended_keys(c, kind) for kind in c.attention_types)


def forward_flops_per_token(model_config):
    return 2 * matmul_params(model_config) + attention_flops_per_token(model_config)


def model_flops_per_token(model_config):
    """Training FLOPs per token: forward + backward (gradients of activations and of weights) = 3 × forward."""
    return 3 * forward_flops_per_token(model_config)


def hardware_flops_per_token(model_config):
    """Model FLOPs plus, with recompute_grad, the blocks' forward pass recomputed in the backward pass."""
    c = model_config
    recomputed = forward_flops_per_token(c) - 2 * c.n_embd * c.n_vocab if c.recompute_grad else 0
    return model_flops_per_token(c) + recomputed


def teacher_flops_per_token(config):
    """A distillation teacher's forward pass per token; 0 without a teacher."""
    return forward_flops_per_token(config.distill.teacher) if config.distill.on else 0


def step_flops_per_token(config):
    """Model FLOPs per token of `config`'s training step: the model's training, plus a teacher's forward."""
    return model_flops_per_token(config.model) + teacher_flops_per_token(config)


def step_hardware_flops_per_token(config):
    return hardware_flops_per_token(config.model) + teacher_flops_per_token(config)


# ---------------------------------------------------------------------------------------------
# Peak FLOP/s


def parse_peak_tflops(text):
    """--peak_tflops: a number (TFLOP/s) or a PEAK_TFLOPS name; an argparse `type`."""
    try:
        value = float(text)
    except ValueError:
        if text.lower() in PEAK_TFLOPS:
            return text.lower()
        raise argparse.ArgumentTypeError("%r is neither a number of TFLOP/s nor a known device (%s)"
                                         % (text, ", ".join(PEAK_TFLOPS))) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("a peak of %r TFLOP/s must be positive" % text)
    return value


def gpu_table_name(device_name):
    """The PEAK_TFLOPS key of a GPU model name as TensorFlow reports it, or None."""
    for pattern, name in GPU_MODELS:
        if re.search(pattern, device_name.upper()):
            return name
    return None


def _gpu_model_name():
    gpus = tf.config.list_physical_devices("GPU")
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "") if gpus else ""


def matmul_dtype(name, precision):
    """The dtype device `name`'s matrix units compute in when the model's activations are `precision`.

    TPUs (and Ampere or newer GPUs) run float32 matmuls at reduced precision, bfloat16 (TF32)
    passes, unless TensorFlow's TensorFloat-32 switch is off; the switch is on by default.
    """
    tf32 = tf.config.experimental.tensor_float_32_execution_enabled()
    if precision == "float32" and tf32:
        if name in TPUS:
            return "bfloat16"
        if "tfloat32" in PEAK_TFLOPS[name]:
            return "tfloat32"
    return precision


@dataclass(frozen=True)
class Peak:
    flops: Optional[float]  # FLOP/s of the whole mesh; None when unknown
    source: str             # where the figure comes from, or why there is none


def mesh_peak(hardware, precision, devices):
    """The peak FLOP/s of the `devices` mesh positions on `hardware` (a trainer.hardware.Hardware).

    `hardware.peak_tflops` (--peak_tflops) is a number per device, but on CPU for the whole
    machine (the CPU mesh's virtual devices share its cores), or a PEAK_TFLOPS name. Without it a
    GPU is looked up by its model name; a TPU (TensorFlow does not report its generation) and a
    CPU have no known peak.
    """
    declared = hardware.peak_tflops
    if isinstance(declared, float):
        if hardware.kind == "cpu":
            return Peak(declared * 1e12, "--peak_tflops %g for the machine (the CPU mesh's devices share it)"
                        % declared)
        return Peak(declared * 1e12 * devices, "--peak_tflops %g per device x %d devices" % (declared, devices))
    name, what = declared, hardware.kind
    if name is None and hardware.kind == "gpu":
        model = _gpu_model_name()
        name, what = gpu_table_name(model), "GPU %r" % model
    if name is None:
        return Peak(None, "no peak FLOP/s known for %s (pass --peak_tflops)" % what)
    dtype = matmul_dtype(name, precision)
    tflops = PEAK_TFLOPS[name].get(dtype)
    if tflops is None:
        return Peak(None, "%s has no %s peak in trainer/flops.py" % (name, dtype))
    return Peak(tflops * 1e12 * devices, "%s %s peak %g TFLOP/s per device x %d devices"
                % (name, dtype, tflops, devices))

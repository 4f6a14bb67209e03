"""Build the step once, symbolically, before the real graph: check the layout and the fit, count parameters.

A tensor may not put two of its dimensions on one mesh dimension (mesh-tf fails deep inside
the lowering otherwise). Which dimensions meet in one tensor depends on the model, so the
step is built in a scratch graph (no memory is allocated) and every tensor is checked: for
training the step that trains (trainer/step.py), for evaluation and sampling the model's forward
pass and loss.

A training step must also fit the memory of a device (trainer/memory.py's estimate, at most
USABLE of it), when that memory is known: --device_memory, or the device's own (`device_of`).
If it does not fit, the error names the biggest tensors and what would fit instead.
"""
import dataclasses
import logging
import re
from dataclasses import dataclass

from ..meshtf import mtf, tf
from ..models.context import Context
from ..models.dims import Dims
from ..models.gpt import gpt_losses
from . import auto_layout
from .config import ConfigError, validate
from .config.schema import training_mesh
from .flops import TPUS, _gpu_model_name
from .memory import GiB, TPU_MEMORY, USABLE, DeviceMemory, estimate, largest_microbatch, lifetimes
from .step import nodes, symbolic

log = logging.getLogger("gptneo")


@dataclass(frozen=True)
class Device:
    """The memory of one mesh device, and where that figure comes from (for messages)."""

    memory: int   # bytes
    source: str


def device_of(hardware, device_memory_gib=None):
    """The Device of --device_memory, else the known memory of `hardware`'s devices, else None.

    A TPU's generation is known only from --peak_tflops (TensorFlow does not report it); a GPU's
    memory from its model name ("NVIDIA A100-SXM4-40GB"); the CPU mesh's devices share the host's.
    """
    if device_memory_gib is not None:
        return Device(int(device_memory_gib * GiB), "--device_memory %g" % device_memory_gib)
    if hardware.kind == "tpu" and hardware.peak_tflops in TPUS:
        return Device(TPU_MEMORY[hardware.peak_tflops], "a TPU %s device (--peak_tflops)" % hardware.peak_tflops)
    if hardware.kind == "gpu":
        name = _gpu_model_name()
        if gpu_memory(name):
            return Device(gpu_memory(name), "GPU %r" % name)
    return None


def gpu_memory(name):
    """Bytes of memory of a GPU model as TensorFlow names it, when the name says ("NVIDIA A100-SXM4-40GB",
    "NVIDIA H100 80GB HBM3"), else None ("Tesla T4")."""
    size = re.search(r"(\d+)\s*GB", name.upper())
    return int(size.group(1)) * GiB if size else None


def preflight(config, mode="train", device=None):
    """Raise ConfigError for a layout conflict, or for training a step that does not fit `device`
    (a Device, or None: not checked); return the number of trainable parameters.

    Sampling ("predict") runs with its own layout (MeshConfig.for_decoding), checked here in its place."""
    if mode != "train":
        tensors, variables = _forward(config, mode)
        _check_layout(tensors, config.mesh.for_decoding(config.train.predict_batch_size) if mode == "predict"
                      else config.mesh)
        return sum(v.size for v in variables)
    step = symbolic(config)
    mesh = training_mesh(config)  # a distillation teacher's dimensions laid out as its config says
    _check_layout([t for node in nodes(step) for t in node.inputs + tuple(node.op.outputs)], mesh)
    _check_fit(config, DeviceMemory(lifetimes(step), mesh.shape_string, mesh.layout_string), device)
    return sum(v.size for v in step.variables)


def _forward(config, mode):
    """(tensors, trainable variables) of the model's forward pass and loss in `mode`, built symbolically."""
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "layout_check")
        d = Dims.build(config.model, config.train.batch_size(mode))
        ids = mtf.zeros(mesh, mtf.Shape([d.batch, d.sequence]), tf.int32)
        gpt_losses(ids, ids, Context(d, config.model, train=False, seed=0))
        return [t for op in graph.operations for t in op.inputs + op.outputs], graph.trainable_variables


def _check_layout(tensors, mesh_config):
    rules = dict(mesh_config.layout)
    for tensor in tensors:
        seen = {}
        for dim in tensor.shape.dims:
            mesh_dim = rules.get(dim.name)
            if mesh_dim is None:
                continue
            if mesh_dim in seen:
                raise ConfigError(
                    "`layout` puts both %r and %r on mesh dimension %r, but the model has a tensor with both "
                    "(%s, shape %s); a tensor can split over a mesh dimension only once: map one of them to "
                    "another mesh dimension or leave it unsplit" % (
                        seen[mesh_dim], dim.name, mesh_dim, tensor.operation.name,
                        [(x.name, x.size) for x in tensor.shape.dims]))
            seen[mesh_dim] = dim.name


def _check_fit(config, memory, device):
    """Log the training step's memory per device; raise ConfigError if it needs more than USABLE of `device`."""
    total = memory.at().total
    if device is None:
        log.info("training needs an estimated %s per device (not checked: no device memory known; pass "
                 "--device_memory GiB to check it)", _size(total))
        return
    budget = int(USABLE * device.memory)
    what = "%d%% of the %s of %s" % (round(100 * USABLE), _size(device.memory), device.source)
    if total <= budget:
        log.info("training needs an estimated %s per device, within %s", _size(total), what)
        return
    biggest = ", ".join("%s %s" % (name, _size(size)) for name, size in memory.largest_tensors(count=3))
    raise ConfigError("training needs an estimated %s per device, more than %s (the biggest tensors: %s); %s"
                      % (_size(total), what, biggest, _what_fits(config, budget, device)))


def _what_fits(config, budget, device):
    """What would make `config`'s step fit `budget` bytes per device, in words: each key on its own."""
    fixes, variants = [], [(config, "")]
    if not config.model.recompute_grad:
        recomputed = _with(config, "model", recompute_grad=True)
        variants.append((recomputed, " with recompute_grad=true"))
        total = estimate(recomputed).at().total
        if total <= budget:
            fixes.append("recompute_grad=true (%s)" % _size(total))
    if not config.model.chunked_loss:
        chunked = _with(config, "model", chunked_loss=True)
        try:
            validate(chunked)
            total = estimate(chunked).at().total
        except ConfigError:  # an objective that needs the logits
            total = None
        if total is not None and total <= budget:
            fixes.append("chunked_loss=true (%s)" % _size(total))
    for candidate, also in variants:  # microbatches, with recompute_grad only if they need it
        tokens = largest_microbatch(candidate, budget)
        if tokens:
            total = estimate(_with(candidate, "train", tokens_per_mb_per_replica=tokens)).at().total
            fixes.append("tokens_per_mb_per_replica=%d%s (%s)" % (tokens, also, _size(total)))
            break
    if config.mesh.size > 1:
        try:
            choice = auto_layout.search(config, device_memory=device.memory)
        except ConfigError:  # no other layout passes validation
            choice = None
        if choice and choice.fits and dict(choice.layout) != dict(config.mesh.layout):
            fixes.append("layout=%s (%s, --auto_layout's choice)" % (choice.layout_string, _size(choice.memory)))
    if not fixes:
        return ("neither recompute_grad, chunked_loss, tokens_per_mb_per_replica nor another layout on this mesh "
                "fits: use more devices or devices with more memory, or a smaller model")
    return "these would fit: " + "; ".join(fixes)


def _with(config, group, **keys):
    return dataclasses.replace(config, **{group: dataclasses.replace(getattr(config, group), **keys)})


def _size(n):
    return "%.3g GiB" % (n / GiB) if n >= GiB / 10 else "%.3g MiB" % (n / 2 ** 20)

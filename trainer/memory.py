"""Memory per device of one training step, on paper: parameters, optimizer state, gradients, activations.

The training step is built symbolically, as preflight builds the model (a scratch graph, nothing is
allocated): the forward pass and loss of `model_fn`'s train mode, the backward pass, and the
optimizer's update, which creates its slots. Every figure is read from that graph, with the slice
shapes mesh-tf itself gives each tensor under a `mesh_shape` and `layout` (`MeshImpl.slice_shape`):
a dimension the layout maps is split over its mesh dimension, every other one is whole on every
device. So the figures follow the model, the optimizer and the layout as they are.

- parameters, optimizer: the slice of every variable one device holds, trainable ones and the
  optimizer's slots (Adam: m and v of each variable's shape; Adafactor: factored row and column
  statistics, plus momentum when beta1 > 0), in the slice dtype, which is float32 also under
  bfloat16 precision. Masters (what checkpoints hold, bfloat16 under that precision) live on the
  host CPUs, not on the devices.
- gradients: a float32 gradient per parameter slice. All of them are alive together, because the
  global norm (clipping, and the logged grad_norm) needs every one before any update runs.
- activations: the most memory the other tensors of the forward and backward pass hold at once on
  a device, running the graph's ops one at a time in graph order: a tensor lives from the op that
  makes it to the last op that reads it. What the backward pass reads is therefore what is kept:
  without recompute_grad every block's intermediates it needs (LayerNorm terms, q/k/v, attention
  logits and weights, the MLP's hidden layer before and after GELU, ...); with recompute_grad only
  each block's input [batch, sequence, embd], plus one block's intermediates while that block is
  recomputed. The logits [batch, sequence, vocab] are float32, as are their gradient and the
  loss's terms of the same shape. Attention logits are float32, [batch, heads, sequence,
  memory_length] in a global layer and [batch, heads, num_blocks, query_block_length,
  memory_block_length] in a local one (2·block/n_ctx of the global size). Computing in bfloat16
  adds a bfloat16 copy of every weight, kept until its gradient.
- Not counted: fusion (XLA on TPU fuses chains of elementwise ops and does not store their
  intermediates, so there the activations are an upper bound), the optimizer's per-variable
  temporaries, communication buffers, the compiled program and runtime reservations; `fits`
  leaves 10 % of the device for these.

A device is one mesh position: a TPU v3 core (16 GiB of HBM each, two per chip), a TPU v4
chip (32 GiB; its two TensorCores form one "megacore" device, so a v4-32 slice is 16 devices),
or a GPU.
"""
import dataclasses
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from meshtf import mtf, tf
from models import dims as names
from models.context import Context
from models.dims import Dims
from models.gpt import gpt, token_losses, variable_dtype
from trainer.config import Config, ConfigError, MeshConfig, parse_layout, parse_mesh_shape, validate
from trainer.optimizer import gradients, make_optimizer

GiB = 2 ** 30
# Share of a device's memory the estimate may use; the rest is for what it does not count.
USABLE = 0.9


@dataclass(frozen=True)
class TrainingStep:
    """What one training step holds, layout-independent: built once, evaluated for any layout.

    Tensor i of the forward and backward pass has shape `shapes[shape_of[i]]`, `itemsize[i]` bytes
    per element and lives from op `birth[i]` to op `death[i]` (inclusive); ops before
    `forward_end` are the forward pass and the loss.
    """

    parameters: Tuple[Tuple[mtf.Shape, int], ...]   # trainable variables: (shape, bytes per element of a slice)
    slots: Tuple[Tuple[mtf.Shape, int], ...]        # the optimizer's variables, likewise
    shapes: Tuple[mtf.Shape, ...]
    shape_of: np.ndarray
    itemsize: np.ndarray
    birth: np.ndarray
    death: np.ndarray
    tensor_names: Tuple[str, ...]
    forward_end: int
    batch_size: int


def training_step(config, precision="float32"):
    """Build the training step of `config` symbolically and record its variables and tensors."""
    dtype = variable_dtype(precision)
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "memory")
        d = Dims.build(config.model, config.train.train_batch_size)
        ids, targets = (mtf.zeros(mesh, mtf.Shape([d.batch, d.sequence]), tf.int32) for _ in range(2))
        logits = gpt(ids, Context(d, config.model, train=True, seed=config.data.seed, dtype=dtype))
        loss, _ = token_losses(logits, targets, d, config.model.z_loss)
        forward_end = len(graph.operations)
        variables = list(graph.trainable_variables)
        grads = gradients(loss, variables)
        operations = list(graph.operations)
        # Applying the gradients creates the optimizer's slot variables (the learning rate is
        # irrelevant here); the update's temporaries are not counted.
        lr = mtf.constant(mesh, config.train.lr, mtf.Shape([]))
        make_optimizer(config.train, lr).apply_grads(grads, variables)
        slots = [v for v in graph.all_variables if not v.trainable]

    last_read = {}
    for i, op in enumerate(operations):
        for t in op.inputs:
            last_read[t] = i
    # Counted elsewhere: the variables' own values (unless computing in another dtype makes a
    # copy) as parameters, the final gradients as gradients.
    skip = set(grads)
    skip.update(v.outputs[0] for v in variables + slots if v.activation_dtype == v.slice_dtype)
    shape_index, rows = {}, []
    for i, op in enumerate(operations):
        for t in op.outputs:
            if t in skip:
                continue
            key = tuple(t.shape.dims)
            shape_index.setdefault(key, len(shape_index))
            rows.append((shape_index[key], t.dtype.size, i, last_read.get(t, i), t.name))
    shape_of, itemsize, birth, death, tensor_names = zip(*rows)
    return TrainingStep(
        parameters=tuple((v.shape, v.slice_dtype.size) for v in variables),
        slots=tuple((v.shape, v.slice_dtype.size) for v in slots),
        shapes=tuple(mtf.Shape(list(k)) for k in shape_index), shape_of=np.array(shape_of),
        itemsize=np.array(itemsize, np.int64), birth=np.array(birth), death=np.array(death),
        tensor_names=tensor_names, forward_end=forward_end, batch_size=config.train.train_batch_size)


@dataclass(frozen=True)
class Memory:
    """Bytes on one device."""

    parameters: int
    optimizer: int
    gradients: int
    activations: int          # peak of the forward and backward pass
    kept_for_backward: int    # alive when the forward pass ends
    batch_per_device: int

    @property
    def total(self):
        return self.parameters + self.optimizer + self.gradients + self.activations


class DeviceMemory:
    """A training step laid out on a mesh: memory per device, for any batch.

    Tensors with a `batch` dimension grow linearly with the batch per device, the others not, so
    the bytes alive at op i are `_live_per_sequence[i]·b + _live_fixed[i]` for b sequences per
    device, and the largest batch that fits follows without a search.
    """

    def __init__(self, step, mesh_shape, layout):
        self.step = step
        impl = mtf.MeshImpl(mtf.convert_to_shape(mesh_shape), mtf.convert_to_layout_rules(layout))

        def elements(shape):
            try:
                return int(np.prod(impl.slice_shape(shape), dtype=np.int64))
            except ValueError as e:  # two dimensions on one mesh dimension, or an uneven split
                raise ConfigError("layout %r on mesh %r cannot lay out a tensor of shape %s: %s"
                                  % (layout, mesh_shape, shape, e)) from None

        batch = mtf.Dimension(names.BATCH, step.batch_size)
        self.batch_split = step.batch_size // elements(mtf.Shape([batch]))
        self.parameters = sum(elements(s) * itemsize for s, itemsize in step.parameters)
        self.optimizer = sum(elements(s) * itemsize for s, itemsize in step.slots)
        self.gradients = 4 * sum(elements(s) for s, _ in step.parameters)  # float32 (optimizer.gradients)
        # Elements per device of each shape, per sequence of the batch when it has a batch dimension.
        per_shape = np.array([elements(s) for s in step.shapes], np.int64)
        has_batch = np.array([batch in s.dims for s in step.shapes])
        per_shape = np.where(has_batch, per_shape // (step.batch_size // self.batch_split), per_shape)
        size = step.itemsize * per_shape[step.shape_of]
        self._per_sequence = np.where(has_batch[step.shape_of], size, 0)
        self._fixed = np.where(has_batch[step.shape_of], 0, size)
        self._live_per_sequence = self._live(self._per_sequence)
        self._live_fixed = self._live(self._fixed)
        kept = (step.birth < step.forward_end) & (step.death >= step.forward_end)
        self._kept = (int(self._per_sequence[kept].sum()), int(self._fixed[kept].sum()))

    def _live(self, size):
        """Bytes alive at each op: tensor sizes added at their birth, removed after their death."""
        delta = np.zeros(int(self.step.death.max()) + 2, np.int64)
        np.add.at(delta, self.step.birth, size)
        np.add.at(delta, self.step.death + 1, -size)
        return np.cumsum(delta)[:-1]

    @property
    def batch_per_device(self):
        """Sequences per device at the config's train_batch_size."""
        return self.step.batch_size // self.batch_split

    def at(self, batch_per_device=None):
        b = self.batch_per_device if batch_per_device is None else batch_per_device
        return Memory(parameters=self.parameters, optimizer=self.optimizer, gradients=self.gradients,
                      activations=int((self._live_per_sequence * b + self._live_fixed).max()),
                      kept_for_backward=self._kept[0] * b + self._kept[1], batch_per_device=b)

    def max_batch_per_device(self, budget):
        """The most sequences per device whose total stays within `budget` bytes (0 if none)."""
        room = budget - self.parameters - self.optimizer - self.gradients - self._live_fixed
        if room.min() < 0:
            return 0
        grows = self._live_per_sequence > 0
        return int((room[grows] // self._live_per_sequence[grows]).min())

    def largest_tensors(self, batch_per_device=None, count=10):
        """(name, bytes) of the largest tensors alive when the activations peak."""
        b = self.batch_per_device if batch_per_device is None else batch_per_device
        peak = int(np.argmax(self._live_per_sequence * b + self._live_fixed))
        alive = np.flatnonzero((self.step.birth <= peak) & (self.step.death >= peak))
        size = self._per_sequence[alive] * b + self._fixed[alive]
        order = np.argsort(-size, kind="stable")[:count]
        return [(self.step.tensor_names[alive[i]], int(size[i])) for i in order]


# ---------------------------------------------------------------------------------------------
# Hardware, and the layouts to recommend for it


@dataclass(frozen=True)
class Target:
    """Hardware to recommend a layout for: one mesh position per device."""

    name: str
    devices: int          # mesh positions: TPU cores (v3), chips (v4), GPUs
    device_memory: int    # bytes per device
    device: str           # what one mesh position is


TARGETS = (
    Target("TPU v3-8", 8, 16 * GiB, "core"),
    Target("TPU v3-32", 32, 16 * GiB, "core"),
    Target("TPU v3-256", 256, 16 * GiB, "core"),
    Target("TPU v4-32", 16, 32 * GiB, "chip"),
    Target("TPU v4-256", 128, 32 * GiB, "chip"),
    Target("1x A100 40GB", 1, 40 * GiB, "GPU"),
    Target("8x A100 40GB", 8, 40 * GiB, "GPU"),
    Target("1x A100 80GB", 1, 80 * GiB, "GPU"),
    Target("8x A100 80GB", 8, 80 * GiB, "GPU"),
)

# Model-parallel layouts over mesh dimension y, after the shipped configs: width (`embd`), width
# and global attention's keys, attention heads and vocabulary, and those plus the MLP's hidden
# layer (Megatron-style); all put the batch on x.
LAYOUTS_2D = ("batch:x,embd:y", "batch:x,embd:y,memory_length:y", "batch:x,heads:y,vocab:y",
              "batch:x,heads:y,vocab:y,intermediate_expanded:y")
# Two model-parallel mesh dimensions: width on y, heads, vocabulary and MLP hidden layer on z.
LAYOUT_3D = "batch:x,embd:y,memory_length:y,heads:z,vocab:z,intermediate_expanded:z"


def candidate_layouts(devices):
    """(mesh_shape, layout, model-parallel ways) for `devices` mesh positions (a power of two)."""
    yield "x:%d" % devices, "batch:x", 1
    model = 2
    while model <= devices:
        data = devices // model
        for layout in LAYOUTS_2D:
            yield "x:%d,y:%d" % (data, model), layout, model
        y = 2
        while y < model:
            yield "x:%d,y:%d,z:%d" % (data, y, model // y), LAYOUT_3D, model
            y *= 2
        model *= 2


@dataclass(frozen=True)
class Recommendation:
    """A layout for a target; its train_batch_size is the config's if that fits, else the largest that does."""

    config: Config        # with the recommended mesh_shape, layout, recompute_grad and train_batch_size
    memory: Memory        # per device at that train_batch_size (1 sequence per device if none fits)
    fits: bool            # at the original config's train_batch_size


def _with_layout(config, mesh_shape, layout, recompute_grad):
    """`config` on another mesh and with recompute_grad on or off, validated like a loaded config."""
    config = dataclasses.replace(
        config, mesh=MeshConfig(mesh_shape=parse_mesh_shape(mesh_shape), layout=parse_layout(layout)),
        model=dataclasses.replace(config.model, recompute_grad=recompute_grad))
    validate(config)
    return config


def training_steps(config):
    """{recompute_grad: the TrainingStep of `config` with it} for False and True."""
    return {recompute: training_step(dataclasses.replace(
        config, model=dataclasses.replace(config.model, recompute_grad=recompute))) for recompute in (False, True)}


def recommend(config, target, steps):
    """The layout to train `config` with on `target`, by memory; `steps` are `training_steps(config)`.

    Among the layouts that fit at the config's train_batch_size: the fewest model-parallel ways
    (each costs communication in every layer), then without recompute_grad (which costs another
    forward pass), then the least memory. If none fits: the one that fits the largest batch (and
    among those, as above); if none fits even one sequence per device: the least memory there.
    """
    budget = int(USABLE * target.device_memory)
    best = None
    for mesh_shape, layout, model_ways in candidate_layouts(target.devices):
        for recompute in (False, True):
            try:
                candidate = _with_layout(config, mesh_shape, layout, recompute)
                device = DeviceMemory(steps[recompute], mesh_shape, layout)
            except ConfigError:
                continue
            total = device.at().total
            max_batch = device.max_batch_per_device(budget) * device.batch_split
            if total <= budget:
                rank = (0, model_ways, recompute, total)
            elif max_batch:
                rank = (1, -max_batch, model_ways, recompute, total)
            else:
                rank = (2, device.at(1).total)
            if best is None or rank < best[0]:
                best = rank, candidate, device
    if best is None:
        raise ConfigError("no candidate layout for %d devices passes validation for %s" % (target.devices, config.name))
    rank, candidate, device = best
    fits = rank[0] == 0
    per_device = device.batch_per_device if fits else max(device.max_batch_per_device(budget), 1)
    train = dataclasses.replace(candidate.train, train_batch_size=per_device * device.batch_split)
    return Recommendation(dataclasses.replace(candidate, train=train), device.at(per_device), fits)

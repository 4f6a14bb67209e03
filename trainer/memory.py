"""Memory per device of one training step, on paper: parameters, optimizer state, gradients, activations.

Every figure is read from the training step the trainer runs, built symbolically (trainer/step.py:
nothing is allocated): the forward pass and loss, the backward pass, and the optimizer's update, which
creates its slots. The figures take the slice shapes mesh-tf itself gives each tensor under a
`mesh_shape` and `layout` (`MeshImpl.slice_shape`): a dimension the layout maps is split over its mesh
dimension, every other one is whole on every device. So they follow the model, the objective
(MoE's balancing loss, entmax, MLM scoring), microbatching, the optimizer and the layout as they are.

- parameters, optimizer: the slice of every variable one device holds, trainable ones and the
  optimizer's slots (Adam: m and v of each variable's shape; Adafactor: factored row and column
  statistics, plus momentum when beta1 > 0), in the slice dtype, which is float32 also under
  bfloat16 precision. Masters (what checkpoints hold, bfloat16 under that precision) live on the
  host CPUs, not on the devices (and outside TPUs hold values only during saves: trainer/masters.py).
- teacher: with a distillation teacher (trainer/distill.py), the slice of each of its variables one
  device holds under its own layout (trainer.config.schema.training_mesh). It has no gradients and no
  optimizer state; its forward pass's tensors count with the activations (it runs before the student's
  backward pass, and only the logits it hands the loss stay alive into it).
- gradients: a float32 gradient per parameter slice. All of them are alive together, because the
  global norm (clipping, and the logged grad_norm) needs every one before any update runs. With
  microbatches these are the sums over the microbatches, alive through the loop.
- activations: the most memory the other tensors of the forward and backward pass hold at once on
  a device, running the step's ops one at a time in order (trainer.step.nodes): a tensor lives from
  the op that makes it to the last op that reads it. What the backward pass reads is therefore what
  is kept: without recompute_grad every block's intermediates it needs (LayerNorm outputs, q/k/v,
  attention weights, the MLP's hidden layer before and after GELU, ...); with
  recompute_grad only each block's input [batch, sequence, embd], plus one block's intermediates
  while that block is recomputed. The logits [batch, sequence, vocab] and their gradient are in the
  activations' dtype; the loss and its gradient each hold one float32 tensor of that shape while
  they run. Computing in bfloat16 adds a bfloat16 copy of every weight, kept until its gradient.
  With microbatches the loop's body runs one microbatch at a time: its tensors are a microbatch's,
  and each microbatch's gradients are added to the sums as they come; the whole batch's ids and
  targets stay alive through the loop.
- Not counted: fusion (XLA on TPU fuses chains of elementwise ops and does not store their
  intermediates, so there the activations are an upper bound), the optimizer's per-variable
  temporaries, communication buffers, the compiled program and runtime reservations; a step "fits"
  a device if it needs at most USABLE of its memory, leaving the rest for these.

A device is one mesh position: a TPU v3 core (16 GiB of HBM each, two per chip), a TPU v4
chip (32 GiB; its two TensorCores form one "megacore" device, so a v4-32 slice is 16 devices),
or a GPU.
"""
import dataclasses
from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ..meshtf import mtf
from .config import ConfigError
from .config.schema import replica_tokens, training_mesh
from .step import nodes, symbolic

GiB = 2 ** 30
# Share of a device's memory the estimate may use; the rest is for what it does not count.
USABLE = 0.9
# Memory of one TensorFlow device (mesh position) of each TPU generation (trainer/flops.py's names):
# a v2/v3 core, or a v4/v5e/v5p chip.
TPU_MEMORY = {"v2": 8 * GiB, "v3": 16 * GiB, "v4": 32 * GiB, "v5e": 16 * GiB, "v5p": 95 * GiB}


@dataclass(frozen=True)
class Lifetimes:
    """What one training step holds, layout-independent: read once, evaluated for any layout.

    Tensor i of the forward and backward pass has shape `shapes[shape_of[i]]`, `itemsize[i]` bytes
    per element and lives from node `birth[i]` to node `death[i]` (inclusive) of trainer.step.nodes;
    nodes before `forward_end` are the forward pass and the loss (a microbatch's, with microbatches).
    """

    parameters: Tuple[Tuple[mtf.Shape, int], ...]   # trainable variables: (shape, bytes per element of a slice)
    slots: Tuple[Tuple[mtf.Shape, int], ...]        # the optimizer's variables, likewise
    teacher: Tuple[Tuple[mtf.Shape, int], ...]      # a distillation teacher's variables, likewise
    shapes: Tuple[mtf.Shape, ...]
    shape_of: np.ndarray
    itemsize: np.ndarray
    birth: np.ndarray
    death: np.ndarray
    tensor_names: Tuple[str, ...]
    forward_end: int
    batch: mtf.Dimension   # the batch the model runs on (a microbatch's); tensors with it grow with it


def lifetimes(step):
    """The Lifetimes of a trainer.step.Step."""
    walk = nodes(step)
    last_read = {}
    for i, node in enumerate(walk):
        for t in node.inputs:
            last_read[t] = i
    # Counted elsewhere: the variables' own values (unless computing in another dtype makes a
    # copy) as parameters, the final gradients as gradients.
    skip = set(step.grads)
    skip.update(v.outputs[0] for v in step.variables + step.slots + step.teacher
                if v.activation_dtype == v.slice_dtype)
    shape_index, rows = {}, []

    def add(shape, itemsize, birth, death, name):
        key = tuple(shape.dims)
        shape_index.setdefault(key, len(shape_index))
        rows.append((shape_index[key], itemsize, birth, death, name))

    for i, node in enumerate(walk):
        for t in node.op.outputs:
            if t not in skip:
                add(t.shape, t.dtype.size, i, last_read.get(t, i), t.name)
        # An op's own buffers while it runs (the fused ops of models/ declare them): (shape, dtype), or
        # (shape, dtype, parts) for a buffer of 1/parts of that shape (a chunk of it).
        for k, (shape, dtype, *parts) in enumerate(getattr(node.op, "scratch", ())):
            add(shape, dtype.size / (parts[0] if parts else 1), i, i, "%s/scratch_%d" % (node.op.name, k))
    shape_of, itemsize, birth, death, tensor_names = zip(*rows)
    forward_end = next(i for i, node in enumerate(walk) if step.model_loss in node.op.outputs) + 1
    return Lifetimes(
        parameters=tuple((v.shape, v.slice_dtype.size) for v in step.variables),
        slots=tuple((v.shape, v.slice_dtype.size) for v in step.slots),
        teacher=tuple((v.shape, v.slice_dtype.size) for v in step.teacher),
        shapes=tuple(mtf.Shape(list(k)) for k in shape_index), shape_of=np.array(shape_of),
        itemsize=np.array(itemsize, np.float64), birth=np.array(birth), death=np.array(death),
        tensor_names=tensor_names, forward_end=forward_end, batch=step.batch)


@dataclass(frozen=True)
class Memory:
    """Bytes on one device."""

    parameters: int
    optimizer: int
    gradients: int
    activations: int          # peak of the forward and backward pass
    kept_for_backward: int    # alive when the forward pass ends
    batch_per_device: int
    teacher: int = 0          # a distillation teacher's variables

    @property
    def total(self):
        return self.parameters + self.optimizer + self.gradients + self.activations + self.teacher


class DeviceMemory:
    """A training step laid out on a mesh: memory per device, for any batch.

    Tensors with the model's batch dimension grow linearly with its sequences per device, the others
    not (with microbatches: a microbatch's sequences; the whole batch's ids are fixed), so the bytes
    alive at node i are `_live_per_sequence[i]·b + _live_fixed[i]` for b sequences per device, and the
    largest batch that fits follows without a search.
    """

    def __init__(self, lifetimes, mesh_shape, layout):
        self.lifetimes = step = lifetimes
        impl = mtf.MeshImpl(mtf.convert_to_shape(mesh_shape), mtf.convert_to_layout_rules(layout))

        def elements(shape):
            try:
                return int(np.prod(impl.slice_shape(shape), dtype=np.int64))
            except ValueError as e:  # two dimensions on one mesh dimension, or an uneven split
                raise ConfigError("layout %r on mesh %r cannot lay out a tensor of shape %s: %s"
                                  % (layout, mesh_shape, shape, e)) from None

        self.batch_split = step.batch.size // elements(mtf.Shape([step.batch]))
        self.parameters = sum(elements(s) * itemsize for s, itemsize in step.parameters)
        self.optimizer = sum(elements(s) * itemsize for s, itemsize in step.slots)
        self.teacher = sum(elements(s) * itemsize for s, itemsize in step.teacher)
        self.gradients = 4 * sum(elements(s) for s, _ in step.parameters)  # float32 (optimizer.gradients)
        # Elements per device of each shape, per sequence of the batch when it has the model's batch dimension.
        per_shape = np.array([elements(s) for s in step.shapes], np.int64)
        has_batch = np.array([step.batch in s.dims for s in step.shapes])
        per_shape = np.where(has_batch, per_shape // self.batch_per_device, per_shape)
        size = step.itemsize * per_shape[step.shape_of]
        self._per_sequence = np.where(has_batch[step.shape_of], size, 0)
        self._fixed = np.where(has_batch[step.shape_of], 0, size)
        self._live_per_sequence = self._live(self._per_sequence)
        self._live_fixed = self._live(self._fixed)
        kept = (step.birth < step.forward_end) & (step.death >= step.forward_end)
        self._kept = (int(self._per_sequence[kept].sum()), int(self._fixed[kept].sum()))

    def _live(self, size):
        """Bytes alive at each node: tensor sizes added at their birth, removed after their death."""
        delta = np.zeros(int(self.lifetimes.death.max()) + 2, np.float64)
        np.add.at(delta, self.lifetimes.birth, size)
        np.add.at(delta, self.lifetimes.death + 1, -size)
        return np.cumsum(delta)[:-1]

    @property
    def batch_per_device(self):
        """Sequences per device of the batch the model runs on (a microbatch's) in the step as built."""
        return self.lifetimes.batch.size // self.batch_split

    def at(self, batch_per_device=None):
        b = self.batch_per_device if batch_per_device is None else batch_per_device
        return Memory(parameters=self.parameters, optimizer=self.optimizer, gradients=self.gradients,
                      activations=int((self._live_per_sequence * b + self._live_fixed).max()),
                      kept_for_backward=self._kept[0] * b + self._kept[1], batch_per_device=b, teacher=self.teacher)

    def max_batch_per_device(self, budget):
        """The most sequences per device (of a microbatch, with microbatches) whose total stays within
        `budget` bytes (0 if none)."""
        room = budget - self.parameters - self.optimizer - self.gradients - self.teacher - self._live_fixed
        if room.min() < 0:
            return 0
        grows = self._live_per_sequence > 0
        return int((room[grows] // self._live_per_sequence[grows]).min())

    def largest_tensors(self, batch_per_device=None, count=10):
        """(name, bytes) of the largest tensors alive when the activations peak."""
        b = self.batch_per_device if batch_per_device is None else batch_per_device
        peak = int(np.argmax(self._live_per_sequence * b + self._live_fixed))
        alive = np.flatnonzero((self.lifetimes.birth <= peak) & (self.lifetimes.death >= peak))
        size = self._per_sequence[alive] * b + self._fixed[alive]
        order = np.argsort(-size, kind="stable")[:count]
        return [(self.lifetimes.tensor_names[alive[i]], int(size[i])) for i in order]


def estimate(config):
    """The DeviceMemory of `config`'s training step on its own mesh_shape and layout."""
    mesh = training_mesh(config)
    return DeviceMemory(lifetimes(symbolic(config)), mesh.shape_string, mesh.layout_string)


def largest_microbatch(config, budget):
    """The largest `tokens_per_mb_per_replica` with which `config`'s step needs at most `budget` bytes
    per device, or None.

    A microbatched step's memory grows linearly with the sequences of a microbatch, so one step, of
    microbatches of one sequence per replica, tells the largest microbatch that fits; the key's value
    must divide the replica's batch (trainer.config's rule).
    """
    n_ctx = config.model.n_ctx
    sequences = replica_tokens(config) // n_ctx
    smallest = dataclasses.replace(config, train=dataclasses.replace(config.train, tokens_per_mb_per_replica=n_ctx))
    most = min(estimate(smallest).max_batch_per_device(budget), sequences)
    fitting = [k for k in range(1, most + 1) if sequences % k == 0]
    return fitting[-1] * n_ctx if fitting else None

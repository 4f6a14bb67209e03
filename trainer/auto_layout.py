"""--auto_layout and --auto_layout_and_mesh_shape: choose a `layout` (and `mesh_shape`) for a config.

The original ran mesh-tf's auto_mtf (ortools), which minimises peak memory alone. This is a search of
our own over the layout vocabulary, priced by memory and by what a step costs:

Candidates. Each of the dimensions in SEARCHED_DIMS goes to one mesh dimension or stays whole:
batch (data parallelism), heads, vocab and intermediate_expanded (Megatron-style model parallelism),
embd (the width) and memory_length (keys of global attention). The other names are left out:
splitting the sequence or the local attention blocks turns their reshapes and shifts into gathers,
and splitting features_per_head would all-reduce every attention logit. `--auto_layout` keeps the
config's mesh_shape; `--auto_layout_and_mesh_shape` tries every factorisation of the mesh size
into at most four mesh dimensions (as the original), each of which must split something.

Validity. Two dimensions of one tensor (or of one einsum) may not share a mesh dimension (the
preflight rule, found here from the training step's own tensors, so the winner passes preflight),
and the config must pass validation with the layout (every split divides its dimension, the batch
splits evenly, `tokens_per_mb_per_replica` divides a replica's batch).

Cost model, per device, for one training step: the step the trainer runs (trainer/step.py: forward
pass, loss and backward pass, microbatches included), built symbolically; the optimizer's update is
elementwise and left out. How many microbatches a step runs depends on how far the batch is split,
so there is one step per microbatch count among the candidates.
- memory: parameters, optimizer slots, gradients and peak activations (trainer/memory.py).
- compute: the FLOPs of every einsum, 2 × the multiply-adds of the slice this device computes,
  once per microbatch in the microbatch loop. A dimension split nowhere is computed whole on every
  device, so layouts that leave mesh dimensions idle cost more.
- communication: the bytes this device sends in the collectives mesh-tf's lowering issues: an
  einsum or sum over a split dimension all-reduces its output (2(g-1)/g of the slice over g
  devices, ring all-reduce); mesh-tf delays such an all-reduce past additions of partial sums with
  the same split, and so does this count; a reshape that changes a split all-concatenates or
  all-to-alls ((g-1)/g of the slice); an embedding lookup in a split table all-reduces the rows
  found. Data parallelism's gradient all-reduce is one of these (the weight-gradient einsums sum
  over the split batch); mesh-tf adds up the microbatches' partial sums of a gradient and
  all-reduces them once, after the loop, and so does this count. The counts equal the collectives
  a real lowering issues, each inside the loop once per microbatch (tested).
- step cost = FLOPs + FLOPS_PER_BYTE × bytes: one byte sent costs as much time as FLOPS_PER_BYTE
  FLOPs computed.

Choice. Among the candidates whose memory fits USABLE of `device_memory`, the lowest step cost;
if none fits, the least memory (as auto_mtf), then the lowest step cost. Ties go to the first
of the printed (mesh_shape, layout) strings, so the output is deterministic.
"""
import dataclasses
import itertools
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..meshtf import mtf, tf
from ..models import dims as names
from ..models import chunked_loss, layers
from .config import ConfigError, MeshConfig, microbatches, validate
from .memory import GiB, USABLE, DeviceMemory, lifetimes
from .step import nodes, symbolic

SEARCHED_DIMS = (names.BATCH, names.MEMORY_LENGTH, names.EMBD, names.HEADS, names.VOCAB,
                 names.INTERMEDIATE_EXPANDED)
MESH_DIM_NAMES = ("x", "y", "z", "w")
# One byte sent costs the time of this many FLOPs computed. An A100 computes 312 bf16 TFLOP/s and sends
# about 300 GB/s per direction over NVLink (~1000 FLOPs per byte); TPU interconnects are of the same
# order. A rough weight: it only has to be of the right order to rank layouts.
FLOPS_PER_BYTE = 500
DEFAULT_DEVICE_MEMORY = 16 * GiB  # a TPU v3 core, the original's hardware


# ---------------------------------------------------------------------------------------------
# The training step as a list of operations, priced for any layout


@dataclass(frozen=True)
class Op:
    """One mtf operation, reduced to what its lowering communicates and computes.

    kind: "einsum", "sum" (reduce_sum), "reduce" (all-reduced at once: max, min, embedding lookups),
    "reshape", "add" (may keep partial sums pending, as mesh-tf's lazy all-reduce does), "loop" (the
    microbatch loop, after its operations: sums them) or "other" (slicewise).
    """

    kind: str
    inputs: Tuple[int, ...]          # tensor ids
    output: Optional[int]            # tensor id
    reduced: Tuple[str, ...] = ()    # einsum, sum, reduce: dimensions summed away, in mesh-tf's order
    result: Tuple = ()               # einsum: the output's dimensions found in the inputs; reduce: the
                                     # all-reduced tensors' dimensions, when not the output's
    work: Tuple = ()                 # einsum: all dimensions of the computation
    runs: int = 1                    # per step (trainer.step.Node)
    sums: Tuple = ()                 # loop: (body output, loop output) tensor ids
    allreduces: int = 1              # reduce: how many all-reduces of the output's size it issues


@dataclass(frozen=True)
class Costs:
    """Per device, for one training step."""

    flops: int
    bytes_sent: int
    counters: Dict[str, int]   # as mesh-tf's lowering counts: laid-out elements of einsum work and of each collective

    @property
    def step_cost(self):
        return self.flops + FLOPS_PER_BYTE * self.bytes_sent


class StepOperations:
    """The training step's operations, priced for a mesh shape and layout without lowering them."""

    def __init__(self, step):
        """`step`: a trainer.step.Step, whose loss and gradients the rest of the step reads."""
        ids = {}

        def tensor_id(t):
            return ids.setdefault(t, len(ids))

        self.ops = []
        conflicts = set()
        for node in nodes(step):
            inputs = tuple(tensor_id(t) for t in node.inputs)
            for t in node.inputs + tuple(node.op.outputs):
                conflicts.update(_pairs(t.shape.dims))
            if node.sums:
                sums = tuple((tensor_id(a), tensor_id(b)) for a, b in node.sums)
                self.ops.append(Op("loop", inputs, None, sums=sums))
                continue
            if isinstance(node.op, (chunked_loss._TiedLogZAndTarget, chunked_loss._TiedLogZAndTargetGrad)):
                ops = _tied_loss_ops(node.op, inputs, tuple(tensor_id(t) for t in node.op.outputs), conflicts)
            else:
                ops = [_op(node.op, inputs, tensor_id(node.op.outputs[0]) if node.op.outputs else None, conflicts)]
            self.ops += [dataclasses.replace(op, runs=node.runs) if node.runs > 1 else op for op in ops]
        self.shapes = {i: t.shape for t, i in ids.items()}
        self.dims = {i: tuple(t.shape.dims) for t, i in ids.items()}
        self.itemsize = {i: t.dtype.size for t, i in ids.items()}
        self.outputs = tuple(tensor_id(t) for t in (step.loss,) + step.grads)
        self.conflicts = frozenset(conflicts)

    def valid(self, layout):
        """No two dimensions of one tensor or einsum on one mesh dimension ({tensor dim: mesh dim})."""
        return not any(a in layout and layout.get(b) == layout[a] for a, b in self.conflicts)

    def costs(self, mesh_shape, layout):
        """The step's Costs on `mesh_shape` ((name, size), ...) under `layout` ((tensor dim, mesh dim), ...)."""
        impl = mtf.MeshImpl(mtf.convert_to_shape(_shape_string(mesh_shape)),
                            mtf.convert_to_layout_rules(_layout_string(layout)))
        axis_of = {tensor_dim: impl.shape.dimension_names.index(mesh_dim) for tensor_dim, mesh_dim in layout}
        sizes = impl.shape.to_integer_list
        split = {tensor_dim: sizes[axis] for tensor_dim, axis in axis_of.items()}
        known = {}

        def laid_out(dims):
            if dims not in known:
                n = impl.size
                for d in dims:
                    n *= d.size // split.get(d.name, 1)
                known[dims] = n
            return known[dims]

        counters = {"einsum": 0, "allreduce": 0, "allconcat": 0, "alltoall": 0}
        sent = 0.0

        def collective(kind, axes, elements, itemsize, runs):
            nonlocal sent
            group = 1
            for axis in axes:
                group *= sizes[axis]
            counters[kind] += elements * runs
            sent += runs * (2 if kind == "allreduce" else 1) * (group - 1) / group * elements / impl.size * itemsize

        # Partial sums whose all-reduce mesh-tf has not issued yet: tensor id -> (mesh axes, laid-out elements).
        pending = {}

        def settle(tensor, runs):
            if tensor in pending:
                axes, elements = pending.pop(tensor)
                collective("allreduce", axes, elements, self.itemsize[tensor], runs)

        for op in self.ops:
            if op.kind in ("einsum", "sum", "reduce"):
                for t in op.inputs:
                    settle(t, op.runs)
                axes = [axis_of[name] for name in op.reduced if name in axis_of]
                if op.kind == "einsum":
                    counters["einsum"] += laid_out(op.work) * op.runs
                if axes:
                    reduced = op.result if op.kind == "einsum" else op.result or self.dims[op.output]
                    pending[op.output] = (axes, laid_out(reduced))
                    # A max is all-reduced at once, and so is an einsum broadcast to new dimensions.
                    if op.kind == "reduce" or (op.kind == "einsum" and op.result != self.dims[op.output]):
                        settle(op.output, op.runs * op.allreduces)
            elif op.kind == "add" and _sum_later(op, pending, self.dims):
                # Partial sums are added first and all-reduced once, counted as the first operand.
                pending[op.output] = pending[op.inputs[0]]
                for t in set(op.inputs):
                    del pending[t]
            elif op.kind == "reshape":
                if self._reshape(op, impl, laid_out, collective) or op.inputs[0] not in pending:
                    settle(op.inputs[0], op.runs)
                else:
                    pending[op.output] = pending.pop(op.inputs[0])
            elif op.kind == "loop":
                # The microbatches' partial sums are added up and all-reduced once, after the loop.
                for addend, total in op.sums:
                    if addend in pending:
                        pending[total] = pending.pop(addend)
            else:
                for t in op.inputs:
                    settle(t, op.runs)
        for t in self.outputs:
            settle(t, 1)
        return Costs(flops=2 * counters["einsum"] // impl.size, bytes_sent=int(sent), counters=counters)

    def _reshape(self, op, impl, laid_out, collective):
        """Count the collectives of a reshape as mesh-tf's ReshapeOperation.lower issues them;
        return whether there are any."""
        old, new = self.shapes[op.inputs[0]], self.shapes[op.output]
        before, after = impl.mesh_axis_to_cumprod(old), impl.mesh_axis_to_cumprod(new)
        changed = [axis for axis, (b, a) in enumerate(zip(before, after)) if b != a]
        size = laid_out(self.dims[op.inputs[0]])
        for axis in changed:
            if before[axis] is None and old.cumprod_to_tensor_axis(after[axis]) is not None:
                size //= impl.shape[axis].size  # split before reshaping
        for axis in changed:
            if before[axis] is not None and after[axis] is not None:
                collective("alltoall", [axis], size, self.itemsize[op.output], op.runs)
        for axis in changed:
            if after[axis] is None:
                size *= impl.shape[axis].size
                collective("allconcat", [axis], size, self.itemsize[op.output], op.runs)
        return bool(changed)


def _op(op, inputs, output, conflicts):
    kind = type(op).__name__
    if kind == "EinsumOperation":
        in_dims = set(d for x in op.inputs for d in x.shape.dims)
        result = tuple(d for d in op.outputs[0].shape.dims if d in in_dims)
        # mesh-tf sums in the order of the first operand (or output) holding every dimension, else of their union.
        union = mtf.ops._shape_union([x.shape for x in op.inputs])
        full = next((s.dims for s in [x.shape for x in op.inputs] + [mtf.Shape(list(result))]
                     if s.ndims == union.ndims), union.dims)
        conflicts.update(_pairs(union.dims))
        return Op("einsum", inputs, output, tuple(d.name for d in full if d not in result), result, tuple(union.dims))
    if kind == "ReduceOperation":
        reduced = tuple(d.name for d in op.inputs[0].shape.dims if d not in op.outputs[0].shape.dims)
        return Op("sum" if op._reduction_fn_string == "SUM" else "reduce", inputs, output, reduced)
    if kind == "ReshapeOperation":
        return Op("reshape", inputs, output)
    # Embedding lookups (models/layers.py) all-reduce the rows each device found in its slice of the
    # table; their gradient sums what devices holding different ids found, lazily like a reduce_sum.
    if isinstance(op, layers._Lookup):
        return Op("reduce", inputs, output, (op.inputs[0].shape.dims[0].name,))
    if isinstance(op, layers._ScatterAdd):
        return Op("sum", inputs, output, tuple(d.name for d in op.inputs[1].shape.dims))
    # The loss's normalizer and target logit all-reduce three tensors of its output's shape over a split vocab.
    if isinstance(op, layers._LogZAndTarget):
        return Op("reduce", inputs, output, (op.inputs[0].shape.dims[-1].name,), allreduces=layers._LogZAndTarget.ALLREDUCES)
    # Softmax and LayerNorm all-reduce ALLREDUCES tensors of their input's shape without `dim` where it is split.
    if isinstance(op, (layers._Softmax, layers._SoftmaxGrad, layers._Normalized, layers._NormalizedGrad)):
        dim = op._dim
        kept = tuple(d for d in op.outputs[0].shape.dims if d != dim)
        return Op("reduce", inputs, output, (dim.name,), result=kept, allreduces=type(op).ALLREDUCES)
    if isinstance(op, mtf.ops.BinaryOpWithBroadcasting) and op._tf_fn == tf.add:
        return Op("add", inputs, output)
    return Op("other", inputs, output)


def _tied_loss_ops(op, inputs, outputs, conflicts):
    """models/chunked_loss.py's ops as the einsums and all-reduces their lowering issues: the logits h·wteᵀ
    (all-reduced over a split embd, chunk by chunk), forward the normalizer and target logit (all-reduced
    over a split vocab), backward the logits again, then d h = g·wte and d wte = gᵀ·h, summed lazily as
    einsums' are."""
    h, wte, labels = op.inputs[:3]
    tokens, (vocab, embd) = labels.shape.dims, wte.shape.dims
    work = tuple(tokens) + (vocab, embd)
    conflicts.update(_pairs(work))
    logits = Op("einsum", inputs, outputs[0], (embd.name,), tuple(tokens) + (vocab,), work)
    if isinstance(op, chunked_loss._TiedLogZAndTarget):
        return [logits, Op("reduce", (outputs[0],), outputs[0], (vocab.name,), tuple(tokens),
                           allreduces=chunked_loss._TiedLogZAndTarget.ALLREDUCES)]
    return [logits, Op("einsum", inputs, outputs[0], (vocab.name,), tuple(h.shape.dims), work),
            Op("einsum", inputs, outputs[1], tuple(d.name for d in tokens), (vocab, embd), work)]


def _sum_later(op, pending, dims):
    """Whether mesh-tf adds the partial sums of an addition before all-reducing them: both operands
    pending over the same mesh axes, neither broadcast."""
    return (all(t in pending for t in op.inputs) and len({tuple(pending[t][0]) for t in op.inputs}) == 1
            and all(dims[t] == dims[op.output] for t in op.inputs))


def _pairs(dims):
    """Pairs of searched dimensions that meet in one tensor of dimensions `dims`."""
    present = sorted(d.name for d in dims if d.name in SEARCHED_DIMS)
    return itertools.combinations(present, 2)


class Steps:
    """The training step of each microbatch count, priced (StepOperations) and laid out in memory
    (memory.Lifetimes), built when a candidate first needs it."""

    def __init__(self):
        self.known = {}

    def __call__(self, config):
        """(StepOperations, Lifetimes) of `config`'s step."""
        count = microbatches(config)
        if count not in self.known:
            step = symbolic(config)
            self.known[count] = StepOperations(step), lifetimes(step)
        return self.known[count]


# ---------------------------------------------------------------------------------------------
# The search


@dataclass(frozen=True)
class Choice:
    mesh_shape: Tuple[Tuple[str, int], ...]
    layout: Tuple[Tuple[str, str], ...]
    costs: Costs
    memory: int         # bytes per device
    fits: bool
    candidates: int     # valid candidates compared

    @property
    def mesh_shape_string(self):
        return _shape_string(self.mesh_shape)

    @property
    def layout_string(self):
        return _layout_string(self.layout)


def _shape_string(mesh_shape):
    return ",".join("%s:%d" % pair for pair in mesh_shape)


def _layout_string(layout):
    return ",".join("%s:%s" % pair for pair in layout)


def layouts_for_mesh(mesh_shape, step):
    """Every layout of SEARCHED_DIMS over the mesh dimensions of `mesh_shape` (those of size > 1)
    that keeps apart the dimensions `step` has in one tensor."""
    mesh_dims = [name for name, size in mesh_shape if size > 1]
    for choice in itertools.product([None] + mesh_dims, repeat=len(SEARCHED_DIMS)):
        layout = {t: m for t, m in zip(SEARCHED_DIMS, choice) if m is not None}
        if step.valid(layout):
            yield tuple(layout.items())


def meshes_and_layouts(devices, step, max_mesh_dims=len(MESH_DIM_NAMES)):
    """Every (mesh_shape, layout) over `devices` positions: factorisations into at most
    `max_mesh_dims` dimensions, each splitting at least one searched dimension. Mesh dimensions are
    named x, y, ... with the batch's first, then by size; mirror images are generated once."""
    if devices == 1:
        yield (("x", 1),), ()
        return
    for factors in _factorisations(devices, max_mesh_dims):
        for choice in itertools.product([None] + list(range(len(factors))), repeat=len(SEARCHED_DIMS)):
            groups = [tuple(t for t, c in zip(SEARCHED_DIMS, choice) if c == k) for k in range(len(factors))]
            if not all(groups):
                continue
            # Mesh dimensions of one size are interchangeable: keep their groups in one order only.
            if any(factors[k] == factors[k + 1] and groups[k] > groups[k + 1] for k in range(len(factors) - 1)):
                continue
            order = sorted(range(len(factors)), key=lambda k: (names.BATCH not in groups[k], -factors[k], groups[k]))
            mesh_shape = tuple((MESH_DIM_NAMES[i], factors[k]) for i, k in enumerate(order))
            mesh_of = {t: MESH_DIM_NAMES[i] for i, k in enumerate(order) for t in groups[k]}
            layout = tuple((t, mesh_of[t]) for t in SEARCHED_DIMS if t in mesh_of)
            if step.valid(dict(layout)):
                yield mesh_shape, layout


def _factorisations(n, max_factors, largest=None):
    """Non-increasing factor lists (each >= 2) with product n, at most max_factors long."""
    largest = largest or n
    if n == 1:
        yield ()
        return
    if max_factors == 0:
        return
    for f in range(min(n, largest), 1, -1):
        if n % f == 0:
            for rest in _factorisations(n // f, max_factors - 1, f):
                yield (f,) + rest


def _with_mesh(config, mesh_shape, layout):
    """`config` on this mesh and layout, or None if validation rejects it."""
    candidate = dataclasses.replace(config, mesh=MeshConfig(mesh_shape=mesh_shape, layout=layout))
    try:
        validate(candidate)
    except ConfigError:
        return None
    return candidate


def search(config, with_mesh_shape=False, device_memory=DEFAULT_DEVICE_MEMORY, steps=None):
    """The best layout for `config` on its mesh_shape, or with `with_mesh_shape` the best mesh shape
    and layout for as many devices as its mesh_shape has (see the module docstring). `steps`: a Steps
    to share between searches for one config."""
    steps = steps or Steps()
    own = steps(config)[0]
    pairs = meshes_and_layouts(config.mesh.size, own) if with_mesh_shape else \
        ((config.mesh.mesh_shape, layout) for layout in layouts_for_mesh(config.mesh.mesh_shape, own))
    candidates = {c: candidate for c in pairs for candidate in [_with_mesh(config, *c)] if candidate}
    if not candidates:
        raise ConfigError("no layout of %s over %s passes validation for %s; change the batch size or the mesh" % (
            ", ".join(SEARCHED_DIMS), "%d devices" % config.mesh.size if with_mesh_shape
            else "mesh_shape " + config.mesh.shape_string, config.name))
    memory = _Memory(candidates, steps)
    budget = USABLE * device_memory
    fits = memory.least <= budget
    # Only the candidates the choice is made among are priced.
    pool = [c for c in candidates if (memory(c) <= budget if fits else memory.is_least(c))]
    costs = {c: steps(candidates[c])[0].costs(*c) for c in pool}
    best = min(pool, key=lambda c: (costs[c].step_cost, _shape_string(c[0]), _layout_string(c[1])))
    return Choice(best[0], best[1], costs[best], memory(best), fits, len(candidates))


class _Memory:
    """Memory per device of candidates (trainer/memory.py), computed once per way of splitting.

    A device's memory depends only on how many ways each dimension is split (which also sets the
    microbatch count), and never grows when a dimension is split further, so the least is found
    among the splits that no other candidate's split exceeds.
    """

    def __init__(self, candidates, steps):
        """`candidates`: {(mesh_shape, layout): config}; `steps`: their Steps."""
        self.candidates, self.steps = candidates, steps
        self.known = {}
        by_split = {_split_key(c): c for c in candidates}
        self.maximal = {k for k in by_split
                        if not any(o != k and all(a >= b for a, b in zip(o, k)) for o in by_split)}
        self.least = min(self(by_split[k]) for k in self.maximal)

    def __call__(self, candidate):
        key = _split_key(candidate)
        if key not in self.known:
            mesh_shape, layout = candidate
            step = self.steps(self.candidates[candidate])[1]
            self.known[key] = DeviceMemory(step, _shape_string(mesh_shape), _layout_string(layout)).at().total
        return self.known[key]

    def is_least(self, candidate):
        return _split_key(candidate) in self.maximal and self(candidate) == self.least


def _split_key(candidate):
    """Ways each searched dimension is split."""
    mesh_shape, layout = candidate
    sizes, mesh_of = dict(mesh_shape), dict(layout)
    return tuple(sizes[mesh_of[t]] if t in mesh_of else 1 for t in SEARCHED_DIMS)


def describe(config, choice, with_mesh_shape, device_memory):
    """Lines saying what `search` compared and what the choice costs."""
    where = "%d devices" % config.mesh.size if with_mesh_shape else "mesh_shape " + config.mesh.shape_string
    lines = ["auto layout for %s on %s: %d valid candidates, ranked by step cost per device = einsum FLOPs + %d x "
             "bytes sent, among those whose memory fits %d%% of %.4g GiB" % (
                 config.name, where, choice.candidates, FLOPS_PER_BYTE, round(100 * USABLE), device_memory / GiB),
             "chosen: per device and training step %.4g GiB of memory, %.4g TFLOP, %.4g GB sent" % (
                 choice.memory / GiB, choice.costs.flops / 1e12, choice.costs.bytes_sent / 1e9)]
    if not choice.fits:
        lines.append("no candidate fits; this one needs the least memory: lower train_batch_size, set "
                     "recompute_grad, use more devices, microbatch (tokens_per_mb_per_replica), or give the "
                     "devices' memory with --device_memory")
    return lines

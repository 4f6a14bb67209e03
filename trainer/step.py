"""One training step: the loss and gradients a config trains with, for the trainer and for every tool
that reasons about the step.

`objective` is the objective of models.gpt.gpt_losses (cross-entropy and z-loss or entmax,
MLM's scored positions, MoE's balancing loss), blended with a teacher's when distilling
(trainer/distill.py), and its float32 gradients, over the microbatches of `tokens_per_mb_per_replica`
(trainer.optimizer.objective_and_gradients). model_fn trains with it.
`symbolic` builds it, and the optimizer's update after it, in a scratch graph (nothing is allocated):
preflight checks the layout and the fit on it, trainer/memory.py counts its bytes per device, and
trainer/auto_layout.py prices its layouts, so their figures describe the graph that trains.

`nodes` walks that graph in the order the step runs, for all three. A microbatched step runs the model
in a mesh-tf while loop, which keeps the operations of its condition and body to itself (not in
graph.operations); the walk takes them out.
"""
from dataclasses import dataclass
from typing import Tuple

from ..meshtf import mtf, tf
from ..models.context import Context
from ..models.dims import Dims
from ..models.gpt import gpt_losses, variable_dtype
from . import distill, optimizer
from .config import microbatches

# The terms a distillation step reports beside its loss (trainer/hooks.py logs them).
DISTILL_METRICS = ("label_loss", "distill_loss")


def objective(config, ids, targets, teacher_checkpoint=None):
    """(loss, float32 gradients of the trainable variables, {name: metric}) of a training batch ids ->
    targets [batch, sequence]: the mean objective over the batch, run as `microbatches(config)` microbatches.

    Distilling, the loss is (1 - alpha) · the model's loss + alpha · the mean distillation loss, and the
    metrics are DISTILL_METRICS: the mean cross-entropy of the labels and the mean T² · KL. The teacher's
    variables are read from `teacher_checkpoint` (None: not read, in a step that is never run)."""
    dtype = variable_dtype(config.model.precision)
    k = config.distill

    def loss(ids, targets):  # of a batch or a microbatch (whose `batch` is smaller)
        d = Dims.build(config.model, ids.shape.dims[0].size)
        model_loss, cross_entropy, logits = gpt_losses(  # the logits only to distil
            ids, targets, Context(d, config.model, train=True, seed=config.data.seed, dtype=dtype), logits=k.on)
        if not k.on:
            return model_loss, []
        teacher = distill.teacher_logits(ids, config, teacher_checkpoint)
        kl = mtf.reduce_mean(distill.distillation_loss(logits, teacher, d.vocab, k.distill_temperature,
                                                       k.distill_top_k))
        return (1 - k.distill_alpha) * model_loss + k.distill_alpha * kl, [mtf.reduce_mean(cross_entropy), kl]

    total, grads, metrics = optimizer.objective_and_gradients(loss, [ids, targets], ids.shape.dims[0],
                                                              microbatches(config))
    return total, grads, dict(zip(DISTILL_METRICS, metrics))


def loss_and_gradients(config, ids, targets):
    """(loss, gradients) of `objective`."""
    return objective(config, ids, targets)[:2]


@dataclass(frozen=True)
class Step:
    """A training step built symbolically (`symbolic`)."""

    graph: mtf.Graph
    tf_graph: tf.Graph                    # where it was built (its initialisers are there): lower it in this one
    passes: int                           # graph.operations[:passes]: the forward and backward pass
    loss: mtf.Tensor
    grads: Tuple[mtf.Tensor, ...]         # float32, of `variables`
    variables: Tuple[mtf.Variable, ...]   # the trainable ones
    slots: Tuple[mtf.Variable, ...]       # the optimizer's
    teacher: Tuple[mtf.Variable, ...]     # a distillation teacher's (frozen: no gradients, no slots)
    microbatches: int
    batch: mtf.Dimension                  # the batch the model runs on: a microbatch's in a microbatched step
    model_loss: mtf.Tensor                # the model's loss of that batch: the forward pass ends with it


def symbolic(config):
    """`config`'s training step in a scratch graph: loss and gradients, then the optimizer's update
    (which creates the optimizer's slots; its own operations are elementwise, and left out of `passes`)."""
    with tf.Graph().as_default() as tf_graph:
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "step")
        d = Dims.build(config.model, config.train.train_batch_size)
        ids, targets = (mtf.zeros(mesh, mtf.Shape([d.batch, d.sequence]), tf.int32) for _ in range(2))
        loss, grads, _ = objective(config, ids, targets)
        passes = len(graph.operations)
        variables = tuple(graph.trainable_variables)
        optimizer.minimize(grads, variables, config.train, tf.constant(0, tf.int64))
    n = microbatches(config)
    # A microbatch loop's body returns (counter, loss, gradients...): its loss is the microbatch's.
    model_loss = loss.operation._body_outputs[1] if n > 1 else loss
    teacher = tuple(v for v in graph.all_variables if distill.is_teacher(v))
    slots = tuple(v for v in graph.all_variables if not v.trainable and v not in teacher)
    return Step(graph, tf_graph, passes, loss, tuple(grads), variables, slots, teacher, n,
                mtf.Dimension(d.batch.name, d.batch.size // n), model_loss)


@dataclass(frozen=True)
class Node:
    """An operation of the step, as the accounting sees it."""

    op: mtf.Operation
    runs: int                                       # per step: once per microbatch inside the microbatch loop
    inputs: Tuple[mtf.Tensor, ...]                  # what it reads
    sums: Tuple[Tuple[mtf.Tensor, mtf.Tensor], ...] = ()  # the loop: (body output, loop output), summed over runs


def nodes(step):
    """The forward and backward pass, in the order it runs.

    A microbatch loop's own operations (its condition and body, once per microbatch) come in its place,
    then the loop itself: it reads every tensor from outside that they read (so those stay alive through
    the loop) and sums each microbatch's loss and gradients (its body's outputs) into its outputs.
    """
    walk = []
    for op in step.graph.operations[:step.passes]:
        if not isinstance(op, mtf.WhileLoopOperation):
            walk.append(Node(op, 1, tuple(op.inputs)))
            continue
        inner = op._cond_ops + op._body_ops
        walk += [Node(o, step.microbatches, tuple(o.inputs)) for o in inner]
        made = {t for o in inner for t in o.outputs} | set(op._cond_inputs) | set(op._body_inputs)
        outside = dict.fromkeys(list(op.inputs) + [t for o in inner for t in o.inputs if t not in made])
        accumulators = len(op.inputs)  # the body's outputs after the loop variables
        walk.append(Node(op, 1, tuple(outside), tuple(zip(op._body_outputs[accumulators:], op.outputs[accumulators:]))))
    return walk

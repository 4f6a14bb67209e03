"""Knowledge distillation: the student (the config's model) learns from a frozen teacher's next-token
distribution as well as from the labels (docs/distillation.md). Per token, with temperature T:

    p = softmax(teacher / T)       over the teacher's top k logits with `distill_top_k` = k (the rest get 0)
    q = softmax(student / T)
    loss = (1 - alpha) · label loss + alpha · T² · KL(p || q),      KL(p || q) = Σ_v p_v (log p_v - log q_v)

The label loss is the model's own objective (cross-entropy plus z-loss and MoE balancing). T² keeps
the distillation gradients' size independent of T (Hinton et al. 2015).

The teacher runs in the same graph on the same mesh, in inference mode (no dropout), without
gradient: its variables live under `teacher/`, are not trainable (no gradients, no optimizer slots),
are read from the teacher's checkpoint when they are initialised (`teacher/gpt2/...` <- `gpt2/...`),
and are never saved in the student's checkpoints (checkpoints.UNSAVED).
"""
from tensorflow.python.ops import io_ops

from ..meshtf import mtf, tf
from ..models import dims
from ..models.context import Context
from ..models.dims import Dims
from ..models.gpt import gpt, variable_dtype
from . import checkpoints
from .checkpoints import CheckpointError

SCOPE = "teacher"


def is_teacher(variable):
    """Whether an mtf variable is the teacher's."""
    return variable.name.startswith(SCOPE + "/")


def distillation_loss(student_logits, teacher_logits, vocab, temperature, top_k=0):
    """T² · KL(p || q) per position [batch, sequence] (float32), p the teacher's distribution at
    temperature T (truncated to its top_k most likely tokens and renormalised when top_k > 0), q the
    student's. Both logits are [batch, sequence, vocab]."""
    teacher = mtf.to_float(teacher_logits) / temperature
    student = mtf.to_float(student_logits) / temperature
    log_q = student - mtf.reduce_logsumexp(student, vocab)
    if top_k:
        # The k-th largest logit; ties with it are kept too.
        values, _ = mtf.top_k(teacher, vocab, mtf.Dimension("distill_top_k", top_k))
        kept = mtf.cast(mtf.greater_equal(teacher, mtf.reduce_min(values, reduced_dim=values.shape.dims[-1])),
                        tf.float32)
        highest = mtf.reduce_max(teacher, reduced_dim=vocab)  # always kept
        # log p stays finite for the tokens cut off (p is 0 there, so they add 0 to the sum).
        log_p = teacher - (mtf.log(mtf.reduce_sum(mtf.exp(teacher - highest) * kept, reduced_dim=vocab)) + highest)
        p = mtf.exp(log_p) * kept
    else:
        log_p = teacher - mtf.reduce_logsumexp(teacher, vocab)
        p = mtf.exp(log_p)
    return temperature ** 2 * mtf.reduce_sum(p * (log_p - log_q), reduced_dim=vocab)


def teacher_logits(ids, config, checkpoint=None):
    """The teacher's logits [batch, sequence, vocab] (the student's vocab dimension) for ids [batch,
    sequence], float32 and without gradient. Its variables are created on first call, initialised from
    `checkpoint` (a prefix; None builds the step without reading one, as trainer/step.py's
    `symbolic` does: nothing is initialised there)."""
    t = config.distill.teacher
    d = Dims.build(t, ids.shape.dims[0].size, teacher=True)
    ctx = Context(d, t, train=False, seed=config.data.seed, dtype=variable_dtype(t.precision, training=False))
    with tf.variable_scope(SCOPE, custom_getter=_FrozenFrom(checkpoint)):
        logits = gpt(ids, ctx)
    graph = ids.graph
    # mtf marks every variable trainable; the teacher's are not: no gradients and no optimizer slots for
    # them, and mtf's counters and the memory estimate count them apart.
    graph.trainable_variables[:] = [v for v in graph.trainable_variables if not is_teacher(v)]
    for v in graph.all_variables:
        if is_teacher(v):
            v._trainable = False
    return mtf.stop_gradient(mtf.rename_dimension(mtf.to_float(logits), d.vocab.name, dims.VOCAB))


class _FrozenFrom:
    """The custom getter of the teacher's TF (master) variables: not trainable, never saved, and read from
    `checkpoint` by name without `teacher/` (cast to the variable's dtype; a token table stored with more
    rows, a padded vocab, is cut to n_vocab)."""

    def __init__(self, checkpoint):
        self.checkpoint = checkpoint
        if checkpoint:
            reader = tf.train.load_checkpoint(checkpoint)
            self.shapes, self.dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()

    def __call__(self, getter, name, *args, **kwargs):
        kwargs["trainable"] = False
        if self.checkpoint:
            kwargs["initializer"] = self._stored(name[len(SCOPE) + 1:], kwargs["shape"])
        variable = getter(name, *args, **kwargs)
        tf.add_to_collection(checkpoints.UNSAVED, variable)
        return variable

    def _stored(self, name, shape):
        stored = self.shapes.get(name)
        padded = stored is not None and name == "gpt2/wte" and stored[0] > shape[0] and stored[1:] == list(shape[1:])
        if stored is None or (stored != list(shape) and not padded):
            found = "lacks %s" % name if stored is None else "has %s of shape %s, the teacher config %s" % (
                name, stored, list(shape))
            raise CheckpointError("the teacher checkpoint %s %s: it is not a checkpoint of the teacher config "
                                  "(`distill_teacher`); point distill_teacher_checkpoint at one that is" % (
                                      self.checkpoint, found))

        def read(shape, dtype=None, partition_info=None):
            [value] = io_ops.restore_v2(self.checkpoint, [name], [""], [self.dtypes[name]])
            return tf.cast(value[:shape[0]] if padded else value, dtype)

        return read


def teacher_checkpoint(config):
    """The checkpoint prefix `distill_teacher_checkpoint` names (a checkpoint prefix, or a model_path: its
    newest complete checkpoint)."""
    path = config.distill.distill_teacher_checkpoint
    if tf.io.gfile.isdir(path):
        prefix = checkpoints.latest_checkpoint(path)
        if prefix is None:
            raise CheckpointError("`distill_teacher_checkpoint` %s holds no checkpoint; train the teacher first, or "
                                  "give its model_path or a checkpoint prefix" % path)
        return prefix
    if not tf.io.gfile.exists(path + ".index"):
        raise CheckpointError("`distill_teacher_checkpoint` %s is neither a directory with checkpoints nor a "
                              "checkpoint prefix (no %s.index)" % (path, path))
    return path

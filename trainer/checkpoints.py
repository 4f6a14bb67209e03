"""Checkpoint saving in the original's format: all master variables, sharded, every N steps;
restoring only checkpoints that are complete and fit the model; and writing a checkpoint from
numpy arrays (imported or converted weights).

Only master variables (full, unsplit shapes, the original's names) and `global_step` are saved;
per-device slices are copied to the masters just before each save.
"""
import errno
import logging
import os

import numpy as np
from tensorflow.python.checkpoint import checkpoint_management
from tensorflow.python.ops import io_ops

from ..errors import ConfigError
from ..meshtf import tf
from .guards import RefuseNonFinite

log = logging.getLogger("gptneo")

# The graph collection of TF variables a run reads but never saves: a distillation teacher's
# (trainer/distill.py), restored from its own checkpoint whenever they are initialised.
UNSAVED = "unsaved_variables"


def saved_variables():
    """The global variables checkpoints hold: all but UNSAVED."""
    unsaved = set(tf.get_collection(UNSAVED))
    return [v for v in tf.global_variables() if v not in unsaved]


class CheckpointError(ConfigError):
    """A checkpoint in `model_path` cannot be restored into this model, or cannot be written for lack of
    space; worded for the user."""


def saver_hook(config, fill_masters, save_steps, listeners=()):
    """The CheckpointSaverHook; `fill_masters` (trainer.masters) fills the masters from the slices before
    each save, then our check, then `listeners`."""
    t = config.train
    saver = _Saver(saved_variables(), sharded=True, max_to_keep=t.keep_checkpoint_max,
                   # 10000 hours is the Saver's own "never".
                   keep_checkpoint_every_n_hours=t.keep_checkpoint_every_n_hours or 10000.0,
                   defer_build=False, save_relative_paths=True)
    # The estimator's scaffold restores with the saver it finds in this collection.
    tf.add_to_collection(tf.GraphKeys.SAVERS, saver)
    # No graph.pbtxt: the text form of a mesh graph takes seconds to write (TensorBoard gets the graph anyway).
    return tf.train.CheckpointSaverHook(config.model_path, save_steps=save_steps, saver=saver, save_graph_def=False,
                                        listeners=[fill_masters, RefuseNonFinite(config.model_path), *listeners])


# What the OS says when a disk or a quota is full; TensorFlow's error messages end with it.
_NO_SPACE = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


class _Saver(tf.train.Saver):
    """The Saver, except that a save failing for lack of space deletes what it wrote and raises a
    CheckpointError (which ends training); the complete checkpoints stay as they were."""

    def save(self, sess, save_path, global_step, **kwargs):
        try:
            return super().save(sess, save_path, global_step, **kwargs)
        except tf.errors.OpError as e:
            reason = next((text for text in _NO_SPACE if text in e.message), None)
            if reason is None:
                raise
        model_path = os.path.dirname(save_path)
        _remove_unfinished("%s-%d" % (save_path, global_step))
        kept = latest_checkpoint(model_path)
        then = ("the newest complete checkpoint, %s, is kept: free space and run the same command again to resume "
                "from it" % os.path.basename(kept)) if kept else \
            "there is no complete checkpoint yet: free space and run the same command again"
        raise CheckpointError("the disk of `model_path` %s is full (%s): saving the checkpoint of step %d failed; %s"
                              % (model_path, reason, global_step, then))


def _remove_unfinished(prefix):
    """Delete what a failed save of the checkpoint `prefix` left: the shards in its temporary
    directory, a half-written graph (`.meta`), and files already merged under `prefix`, unless the
    `checkpoint` file lists `prefix` (a resumed run first saves the step it restored, over itself)."""
    state = tf.train.get_checkpoint_state(os.path.dirname(prefix))
    listed = state is not None and os.path.basename(prefix) in {
        os.path.basename(p) for p in state.all_model_checkpoint_paths}
    patterns = [prefix + "_temp*", prefix + (".meta.tmp*" if listed else ".*")]
    for path in {p for pattern in patterns for p in tf.io.gfile.glob(pattern)}:
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)


def incomplete(prefix):
    """Why the checkpoint `prefix` cannot be restored whole, or None when it can.

    A sharded save writes every shard, then merges their indexes into `<prefix>.index` and renames
    the data files to `<prefix>.data-<i>-of-<n>`. A kill, a full disk or a copy cut short leaves
    an unreadable index, missing shards, or shards shorter than the index says: the data files
    hold the tensors' bytes back to back, so their sizes add up to the tensors' sizes.
    """
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as e:
        return "its index %s.index is missing or unreadable (%s)" % (prefix, str(e).strip().splitlines()[0])
    shards = tf.io.gfile.glob(prefix + ".data-*-of-*")
    counts = {int(name.rsplit("-of-", 1)[1]) for name in shards}
    if len(counts) != 1 or len(shards) != counts.pop():
        return "its data files are incomplete (found %s)" % (
            ", ".join(os.path.basename(s) for s in sorted(shards)) or "none")
    expected = sum(int(np.prod(shape)) * dtypes[name].size for name, shape in shapes.items())
    found = sum(tf.io.gfile.stat(s).length for s in shards)
    if found != expected:
        return "its data files hold %d bytes where its index needs %d" % (found, expected)
    return None


def latest_checkpoint(model_path):
    """The prefix of the newest complete checkpoint that the `checkpoint` file lists, or None.

    Newer listed checkpoints that are incomplete are skipped with a warning each, and the
    `checkpoint` file is rewritten to end at the complete one: TensorFlow's own restore (the
    estimator's session) reads that file, so it restores the same checkpoint this returns, and the
    saver's rotation goes on from there. Raises CheckpointError when checkpoints are listed but none
    is complete, rather than training from scratch over them.
    """
    state = tf.train.get_checkpoint_state(model_path)
    if state is None:
        return None
    # The saver lists them oldest first; paths may be relative to model_path (and, on gs://, mangled
    # by TensorFlow's relative-path handling), so only their base names are trusted.
    names = [os.path.basename(p) for p in state.all_model_checkpoint_paths]
    newest = os.path.basename(state.model_checkpoint_path)
    names = [n for n in names if n != newest] + [newest]
    skipped = []
    for i in reversed(range(len(names))):
        prefix = model_path.rstrip("/") + "/" + names[i]
        reason = incomplete(prefix)
        if reason is None:
            break
        skipped.append("%s: %s" % (names[i], reason))
    else:
        raise CheckpointError("no complete checkpoint in %s (%s); restore the files, or delete them and the "
                              "`checkpoint` file to start over" % (model_path, "; ".join(skipped)))
    for reason in skipped:
        log.warning("skipping incomplete checkpoint %s; using %s instead", reason, names[i])
    if skipped:
        kept = [model_path.rstrip("/") + "/" + n for n in names[:i + 1]]
        checkpoint_management.update_checkpoint_state_internal(
            model_path, kept[-1], all_model_checkpoint_paths=kept, save_relative_paths=True)
    return prefix


def latest_step(model_path):
    """Global step of the newest complete checkpoint in `model_path`, 0 when there is none."""
    path = latest_checkpoint(model_path)
    return int(tf.train.load_variable(path, "global_step")) if path else 0


def restore_scaffold_fn(model_path, then=None):
    """A scaffold restoring the newest complete checkpoint however it differs from the graph, or None.

    - A checkpoint of another model (a weight of another shape, or missing) is a CheckpointError
      naming the variables.
    - Variables the checkpoint lacks (optimizer slots of a checkpoint imported from HuggingFace or
      trained with another optimizer) start from their initial values (zeros for Adam).
    - Variables stored in another dtype (bfloat16 masters, e.g. a bf16-trained release, into a
      float32 model) are read as stored and cast.
    - A token table stored with more rows than n_vocab (a vocab padded to e.g. 50304) is read up
      to n_vocab rows, as are its optimizer slots.
    `then` (a function returning an op, e.g. filling per-device slices from the masters, which a
    SavedModel needs at load time) joins the local init op when nothing needs recasting or
    initializing: its ops exist already and would not wait for those. (Outside SavedModels the
    fill hook of trainer.masters fills the slices after the local init.)
    """
    checkpoint = latest_checkpoint(model_path)
    if checkpoint is None:
        return None
    reader = tf.train.load_checkpoint(checkpoint)
    stored, shapes = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()
    _check_fits(checkpoint, shapes)
    variables = tf.global_variables()
    missing = [v for v in variables if v.op.name not in stored]
    recast = [v for v in variables if v.op.name in stored and
              (stored[v.op.name] != v.dtype.base_dtype or _padded_vocab(v, shapes[v.op.name]))]
    if not missing and not recast and then is None:
        return None
    restored = [v for v in variables if v not in missing and v not in recast]
    unsaved = set(tf.get_collection(UNSAVED))  # not in any checkpoint of this run: initialised as always
    if set(missing) - unsaved:
        log.info("%s lacks %d of the model's %d variables; starting %s from their initial values",
                 checkpoint, len(set(missing) - unsaved), len(variables),
                 _some([v.op.name for v in missing if v not in unsaved]))
    recast_dtype = [v for v in recast if stored[v.op.name] != v.dtype.base_dtype]
    if recast_dtype:
        log.info("%s stores %d variables in another dtype (e.g. %s as %s); casting them",
                 checkpoint, len(recast_dtype), recast_dtype[0].op.name, stored[recast_dtype[0].op.name].name)
    padded = [v for v in recast if _padded_vocab(v, shapes[v.op.name])]
    if padded:
        log.info("%s stores %d rows of %s (a padded vocab); reading the first %d (n_vocab)",
                 checkpoint, shapes[padded[0].op.name][0], padded[0].op.name, padded[0].shape.as_list()[0])

    def scaffold_fn():
        ops = [tf.variables_initializer(missing)] if missing else []
        for v in recast:
            [value] = io_ops.restore_v2(checkpoint, [v.op.name], [""], [stored[v.op.name]])
            if _padded_vocab(v, shapes[v.op.name]):
                value = value[:v.shape.as_list()[0]]
            ops.append(v.assign(tf.cast(value, v.dtype.base_dtype)))
        init = tf.group(ops + [tf.train.Scaffold.default_local_init_op()])
        if then is not None and not ops:
            init = tf.group(init, then())
        # Restoring a subset, the local init op (which makes the rest) waits for that subset only.
        # Otherwise the default check, which only a session builds: --export runs none on the
        # scaffold, and TensorFlow logs an ERROR for a check that was built and never run.
        subset = restored != variables
        return tf.train.Scaffold(
            saver=tf.train.Saver(restored, sharded=True) if subset else None,
            ready_for_local_init_op=tf.report_uninitialized_variables(restored) if subset else None,
            local_init_op=init)

    return scaffold_fn


def _check_fits(checkpoint, shapes):
    """CheckpointError unless every variable the checkpoint stores has the graph's shape, and every
    trainable variable (the model's weights; slots may be missing) is stored."""
    variables = tf.global_variables()  # the masters (mtf's per-device slices are not global)
    wrong = ["%s is %s there and %s here" % (v.op.name, shapes[v.op.name], v.shape.as_list())
             for v in variables if v.op.name in shapes and shapes[v.op.name] != v.shape.as_list()
             and not _padded_vocab(v, shapes[v.op.name])]
    absent = [v.op.name for v in variables if v.trainable and v.op.name not in shapes]
    problems = []
    if wrong:
        problems.append("%d variable(s) differ in shape: %s" % (len(wrong), _some(wrong)))
    if absent:
        problems.append("it lacks %d of the model's weights: %s" % (len(absent), _some(absent)))
    if problems:
        raise CheckpointError("%s was written by a different model config (%s); use a `model_path` of its own "
                              "for this config" % (checkpoint, "; ".join(problems)))


def _padded_vocab(variable, stored_shape):
    """Whether `variable` is the token table (or one of its slots) stored with extra rows."""
    ours = variable.shape.as_list()
    return ((variable.op.name == "gpt2/wte" or variable.op.name.startswith("gpt2/wte/")) and
            len(stored_shape) == len(ours) > 0 and stored_shape[0] > ours[0] and stored_shape[1:] == ours[1:])


def _some(names):
    return ", ".join(names[:3]) + (" and %d more" % (len(names) - 3) if len(names) > 3 else "")


# ---------------------------------------------------------------------------------------------
# Writing a checkpoint from arrays


def write_checkpoint(prefix, variables, global_step=0):
    """Save (name, numpy array) pairs, each in its own dtype, plus an int64 `global_step`, as a TF checkpoint.

    prefix ".../model.ckpt" gives .../model.ckpt-<global_step>.{index,data-00000-of-00001} and a
    `checkpoint` file naming it (relative, so the directory can move). Arrays are fed one at a time
    (never embedded in the graph), so large models stay within GraphDef's 2 GB limit.
    Returns the written prefix.
    """
    with tf.Graph().as_default() as graph, tf.Session(graph=graph) as session:
        var_list = {}
        for name, array in variables:
            value = tf.placeholder(tf.as_dtype(array.dtype), array.shape)
            variable = tf.Variable(value, name="v%d" % len(var_list), trainable=False)
            session.run(variable.initializer, {value: array})
            var_list[name] = variable
        step = tf.Variable(np.int64(global_step), name="global_step", trainable=False, dtype=tf.int64)
        session.run(step.initializer)
        var_list["global_step"] = step
        saver = tf.train.Saver(var_list, save_relative_paths=True)
        return saver.save(session, prefix, global_step=global_step, write_meta_graph=False)

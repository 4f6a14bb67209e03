"""Checkpoint saving in the original's format: all master variables, sharded, every N steps.

Only master variables (full, unsplit shapes, the original's names) and `global_step` are saved;
per-device slices are copied to the masters just before each save.
"""
from tensorflow.python.ops import io_ops

from meshtf import mtf, tf

MAX_TO_KEEP = 10
KEEP_EVERY_N_HOURS = 2


def saver_hook(config, lowering, save_steps):
    saver = tf.train.Saver(tf.global_variables(), sharded=True, max_to_keep=MAX_TO_KEEP,
                           keep_checkpoint_every_n_hours=KEEP_EVERY_N_HOURS, defer_build=False,
                           save_relative_paths=True)
    # The estimator's scaffold restores with the saver it finds in this collection.
    tf.add_to_collection(tf.GraphKeys.SAVERS, saver)
    return tf.train.CheckpointSaverHook(config.model_path, save_steps=save_steps, saver=saver,
                                        listeners=[mtf.MtfCheckpointSaverListener(lowering)])


def latest_step(model_path):
    """Global step of the newest checkpoint in `model_path`, 0 when there is none."""
    path = tf.train.latest_checkpoint(model_path)
    return int(tf.train.load_variable(path, "global_step")) if path else 0


def restore_scaffold_fn(model_path, log, then=None):
    """A scaffold restoring the newest checkpoint however it differs from the graph, or None.

    - Variables the checkpoint lacks (optimizer slots of a checkpoint imported from HuggingFace or
      trained with another optimizer) start from their initial values (zeros for Adam).
    - Variables stored in another dtype (bfloat16 masters, e.g. a bf16-trained release, into a
      float32 model) are read as stored and cast.
    `then` (a function returning an op, e.g. filling per-device slices from the masters, which a
    SavedModel needs at load time) joins the local init op when nothing needs recasting or
    initializing: its ops exist already and would not wait for those. (Outside SavedModels the
    estimator's MtfRestoreHook fills the slices after the local init.)
    """
    checkpoint = tf.train.latest_checkpoint(model_path)
    if checkpoint is None:
        return None
    stored = tf.train.load_checkpoint(checkpoint).get_variable_to_dtype_map()
    variables = tf.global_variables()
    missing = [v for v in variables if v.op.name not in stored]
    recast = [v for v in variables if v.op.name in stored and stored[v.op.name] != v.dtype.base_dtype]
    if not missing and not recast and then is None:
        return None
    restored = [v for v in variables if v not in missing and v not in recast]
    if missing:
        log("%s lacks %d of the model's %d variables; starting %s from their initial values" % (
            checkpoint, len(missing), len(variables), _some(missing)))
    if recast:
        log("%s stores %d variables in another dtype (e.g. %s as %s); casting them" % (
            checkpoint, len(recast), recast[0].op.name, stored[recast[0].op.name].name))

    def scaffold_fn():
        ops = [tf.variables_initializer(missing)] if missing else []
        for v in recast:
            [value] = io_ops.restore_v2(checkpoint, [v.op.name], [""], [stored[v.op.name]])
            ops.append(v.assign(tf.cast(value, v.dtype.base_dtype)))
        init = tf.group(ops + [tf.train.Scaffold.default_local_init_op()])
        if then is not None and not ops:
            init = tf.group(init, then())
        return tf.train.Scaffold(
            saver=tf.train.Saver(restored, sharded=True) if restored != variables else None,
            ready_for_local_init_op=tf.report_uninitialized_variables(restored),
            local_init_op=init)

    return scaffold_fn


def _some(variables):
    names = ", ".join(v.op.name for v in variables[:3])
    return names + (" and %d more" % (len(variables) - 3) if len(variables) > 3 else "")

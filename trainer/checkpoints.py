"""Checkpoint saving in the original's format: all master variables, sharded, every N steps.

Only master variables (full, unsplit shapes, the original's names) and `global_step` are saved;
per-device slices are copied to the masters just before each save.
"""
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


def warm_start_scaffold_fn(model_path, log):
    """A scaffold for a checkpoint that holds only some of the variables, or None.

    A checkpoint imported from HuggingFace (or trained with another optimizer) has the model
    weights but not these optimizer slots: restore what it has, start the rest from their
    initial values (zeros for Adam's moments), and save them from the first checkpoint on.
    """
    checkpoint = tf.train.latest_checkpoint(model_path)
    if checkpoint is None:
        return None
    present = dict(tf.train.list_variables(checkpoint))
    variables = tf.global_variables()
    missing = [v for v in variables if v.op.name not in present]
    if not missing:
        return None
    restored = [v for v in variables if v.op.name in present]
    log("%s holds %d of the %d variables; starting %s from their initial values" % (
        checkpoint, len(restored), len(variables),
        ", ".join(v.op.name for v in missing[:3]) + (" and %d more" % (len(missing) - 3) if len(missing) > 3 else "")))

    def scaffold_fn():
        return tf.train.Scaffold(
            saver=tf.train.Saver(restored, sharded=True),
            ready_for_local_init_op=tf.report_uninitialized_variables(restored),
            local_init_op=tf.group(tf.variables_initializer(missing), tf.train.Scaffold.default_local_init_op()))

    return scaffold_fn

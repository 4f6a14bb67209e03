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

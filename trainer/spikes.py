"""Skipping loss spikes (new config keys `skip_loss_spike_factor`, `skip_loss_spike_window`).

A step whose loss is above factor × the mean loss of the previous `window` steps changes neither
the weights nor the optimizer's slots; its global step still counts, so the data moves on. The
window holds every step's loss, skipped ones included, so a loss that stays high is accepted again
once it dominates the mean. Skipping starts once `window` steps have been seen.

The window lives in local variables, never in the checkpoint (which holds only the original's
variables). Before each save its state is written to `<model_path>/loss_spikes.json` under the
step being saved, and a run restored from that step starts from it, so a resumed run skips exactly
the steps an uninterrupted one does.
"""
import json
import logging

import numpy as np

from ..meshtf import mtf, tf

log = logging.getLogger("gptneo")
STATE_FILE = "loss_spikes.json"


class LossSpikes:
    def __init__(self, config, step):
        """The window of the run restored at global step `step`."""
        t = config.train
        self._factor, self._size, self._keep = t.skip_loss_spike_factor, t.skip_loss_spike_window, t.keep_checkpoint_max
        self._model_path = config.model_path
        self._path = config.model_path.rstrip("/") + "/" + STATE_FILE
        saved = self._saved().get(str(step))
        if saved is None:
            if step > 0:
                log.warning("%s holds no loss-spike window for step %d; starting an empty one", self._path, step)
            saved = {"losses": [0.0] * self._size, "seen": 0, "skipped": 0}

        with tf.name_scope("loss_spikes"):
            self._losses, self._seen, self._skipped = (
                tf.Variable(value, name=name, trainable=False, collections=[tf.GraphKeys.LOCAL_VARIABLES])
                for name, value in (("losses", np.array(saved["losses"], np.float32)),
                                    ("seen", np.int64(saved["seen"])), ("skipped", np.int64(saved["skipped"]))))

    def applies(self, loss):
        """An mtf scalar on `loss`'s mesh: 1.0 to apply the step's update, 0.0 to skip a spike."""
        # The window is read once, before `record` changes it in the same step.
        self._seen_before, self._losses_before = self._seen.read_value(), self._losses.read_value()
        threshold = tf.where(self._seen_before >= self._size,
                             self._factor * tf.reduce_mean(self._losses_before), np.float32(np.inf))
        threshold = mtf.import_fully_replicated(loss.mesh, threshold, mtf.Shape([]), name="spike_threshold")
        return mtf.to_float(mtf.less_equal(mtf.to_float(loss), threshold))

    def record(self, loss, applied):
        """The op adding the step's `loss` to the window and counting a skip (TF scalars, lowered)."""
        slot = tf.reshape(tf.mod(self._seen_before, self._size), [1, 1])
        losses = tf.tensor_scatter_nd_update(self._losses_before, slot, tf.reshape(loss, [1]))
        return tf.group(self._losses.assign(losses), self._seen.assign(self._seen_before + 1),
                        self._skipped.assign_add(tf.cast(applied < 1, tf.int64)))

    def hooks(self):
        return [_LogSkips(self._skipped, self._model_path, self._factor, self._size)]

    def saver_listener(self):
        return _SaveWindow(self)

    def _saved(self):
        if not tf.io.gfile.exists(self._path):
            return {}
        with tf.io.gfile.GFile(self._path) as f:
            return json.load(f)

    def save(self, session, step):
        losses, seen, skipped = session.run([self._losses, self._seen, self._skipped])
        # The windows of the newest checkpoints before this one (a rolled-back run's later ones go).
        older = sorted((s for s in self._saved().items() if int(s[0]) < step), key=lambda s: int(s[0]))
        state = dict(older[-self._keep:], **{str(step): {
            "losses": [float(x) for x in losses], "seen": int(seen), "skipped": int(skipped)}})
        temporary = self._path + ".tmp"
        with tf.io.gfile.GFile(temporary, "w") as f:
            json.dump(state, f)
        tf.io.gfile.rename(temporary, self._path, overwrite=True)


class _SaveWindow(tf.train.CheckpointSaverListener):
    """Writes the window before the checkpoint: a complete checkpoint always has its window."""

    def __init__(self, spikes):
        self._spikes = spikes

    def before_save(self, session, global_step_value):
        self._spikes.save(session, global_step_value)


class _LogSkips(tf.train.SessionRunHook):
    """Logs each skip (on TPU: the skips of each loop) and writes the total to TensorBoard."""

    def __init__(self, skipped, model_path, factor, size):
        self._skipped, self._model_path, self._factor, self._size = skipped, model_path, factor, size

    def begin(self):
        self._writer = tf.summary.FileWriterCache.get(self._model_path)
        self._global_step = tf.train.get_global_step()

    def after_create_session(self, session, coord):
        self._count = session.run(self._skipped)

    def after_run(self, run_context, run_values):
        # Read after the run: within it the read would race the step's own count.
        count, step = run_context.session.run([self._skipped, self._global_step])
        if count > self._count:
            log.warning("step %d: skipped the update of %d loss spike(s) (loss > %g × the mean of the previous %d "
                        "steps); %d skipped in all", step, count - self._count, self._factor, self._size, count)
            self._writer.add_summary(tf.Summary(value=[tf.Summary.Value(
                tag="skipped_updates", simple_value=count)]), step)
            self._count = count

"""Stopping training safely.

- SIGTERM or SIGINT (a preemption, Ctrl-C): training stops at the next step boundary, the saver
  writes a checkpoint at that step, and the run ends with StoppedEarly (main.py's exit status
  EXIT_STOPPED), so a retry loop tells it from a finished run. On TPU one session run is a loop of
  `iterations` steps, so the boundary is the end of the current loop.
- A non-finite loss, or a non-finite variable about to be saved: training stops with
  NonFiniteError and nothing more is saved, so the newest checkpoint stays the last good one.
"""
import os
import signal
import threading

import numpy as np

from ..meshtf import tf


# sysexits' EX_TEMPFAIL ("try again later"): stopped by a signal before train_steps, with a checkpoint.
EXIT_STOPPED = 75


class NonFiniteError(RuntimeError):
    """Training diverged; the message names the step."""


class StoppedEarly(Exception):
    """Training stopped at a signal before `train_steps`, with a checkpoint; the message says where."""


class SignalStop:
    """While active: SIGTERM and SIGINT ask training to stop at the next step boundary (through
    `hook`) instead of ending the process. A second signal of the same kind acts as it did before
    (ends the process, or raises KeyboardInterrupt).

    Python runs signal handlers in the main thread only; elsewhere the signals keep their handlers.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.received = None  # the first signal's name
        self._previous = {}
        self.hook = _StopAfterRun(self)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc_info):
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        # Only a flag: the main thread may be anywhere (even inside logging) when this runs.
        self.received = self.received or signal.Signals(signum).name
        signal.signal(signum, self._previous[signum])


class _StopAfterRun(tf.train.SessionRunHook):
    """Requests a stop once a signal has arrived. The session then ends normally, and the
    CheckpointSaverHook's `end` saves the step it reached."""

    def __init__(self, stop):
        self._stop = stop

    def after_run(self, run_context, run_values):
        if self._stop.received:
            run_context.request_stop()


class NonFiniteLossHook(tf.train.SessionRunHook):
    """Raises NonFiniteError after a session run whose loss is NaN or infinite.

    It watches the loss the estimator fetches (on TPU the last step of each loop), which the
    estimator puts in the LOSSES collection. Hooks given to `estimator.train` run before the
    model's, so before the saver's `after_run`; and an exception skips the hooks' `end`, where the
    saver would save again. So the diverged state is never saved.
    """

    def __init__(self, model_path):
        self._model_path = model_path

    def begin(self):
        [self._loss] = tf.get_collection(tf.GraphKeys.LOSSES)
        self._global_step = tf.train.get_global_step()

    def before_run(self, run_context):
        return tf.train.SessionRunArgs(self._loss)

    def after_run(self, run_context, run_values):
        loss = run_values.results
        if not np.isfinite(loss):
            step = run_context.session.run(self._global_step)
            raise NonFiniteError("the loss is %s at step %d; %s" % (loss, step, _kept(self._model_path)))


class RefuseNonFinite(tf.train.CheckpointSaverListener):
    """Before each save (after mtf's listener has copied the slices to the masters): raises
    NonFiniteError if a variable holds NaN or Inf, so no checkpoint ever does.

    Each check runs beside its variable (on TPU hosts), so only one boolean per variable moves.
    """

    def __init__(self, model_path):
        self._model_path = model_path

    def begin(self):
        self._variables = [v for v in tf.global_variables() if v.dtype.base_dtype.is_floating]
        self._finite = []
        for v in self._variables:
            with tf.colocate_with(v):
                self._finite.append(tf.reduce_all(tf.is_finite(v)))

    def before_save(self, session, global_step_value):
        bad = [v.op.name for v, ok in zip(self._variables, session.run(self._finite)) if not ok]
        if bad:
            more = " and %d more" % (len(bad) - 3) if len(bad) > 3 else ""
            raise NonFiniteError("%d variable(s) hold NaN or Inf at step %d (%s%s); %s" % (
                len(bad), global_step_value, ", ".join(bad[:3]), more, _kept(self._model_path)))


def _kept(model_path):
    # Only complete saves are listed in the `checkpoint` file, and the session started from one.
    newest = os.path.basename(tf.train.latest_checkpoint(model_path))
    return ("stopped without saving, so %s stays the newest checkpoint in %s (resume from it with a lower `lr`, "
            "or other data)" % (newest, model_path))

"""Training progress: a log line every `iterations` steps and TensorBoard scalars."""
import logging
import threading
import time

import numpy as np

from ..meshtf import tf
from . import flops
from .step import DISTILL_METRICS

log = logging.getLogger("gptneo")


class Throughput:
    """Tokens/s, model TFLOP/s and MFU of one training run (FLOPs as counted in trainer/flops.py).

    Built once per run, so where the peak comes from (or that MFU is not reported, e.g. on CPU
    without --peak_tflops) is logged once, however many training chunks the run has.
    """

    def __init__(self, config, hardware):
        self._tokens_per_step = config.train.train_batch_size * config.model.n_ctx
        self._model_flops_per_token = flops.step_flops_per_token(config)
        # Differs from the model FLOPs only with recompute_grad; then utilisation is shown both ways.
        self._hardware_flops_per_token = flops.step_hardware_flops_per_token(config)
        self._peak = flops.mesh_peak(hardware, config.model.precision, config.mesh.size)
        self._announced = False

    def announce(self):
        if not self._announced:
            log.info("MFU %s", "against %.4g TFLOP/s: %s" % (self._peak.flops / 1e12, self._peak.source)
                     if self._peak.flops else "not reported: " + self._peak.source)
            self._announced = True

    def report(self, steps, seconds):
        """(log text, {TensorBoard tag: value}) for `steps` steps that took `seconds`."""
        tokens_per_sec = self._tokens_per_step * steps / seconds
        model_flops = tokens_per_sec * self._model_flops_per_token
        text = "%.0f tokens/s | %.3g TFLOP/s" % (tokens_per_sec, model_flops / 1e12)
        scalars = {"tokens_per_sec": tokens_per_sec}
        if self._peak.flops:
            scalars["mfu"] = model_flops / self._peak.flops
            text += " | MFU %.3g%%" % (100 * scalars["mfu"])
            if self._hardware_flops_per_token != self._model_flops_per_token:
                text += " | HFU %.3g%%" % (100 * tokens_per_sec * self._hardware_flops_per_token / self._peak.flops)
        return text, scalars


class Progress:
    """The training log line and its TensorBoard scalars, fed by the host call (`summary_host_call`)
    step by step, so on TPU as on CPU: every `iterations` steps, and for the steps left when training
    stops between two such lines (a run shorter than `iterations`, the end of a chunk),

        step 500/286150 | loss 3.214 | lr 0.0001 | grad_norm 0.51 | 21843 tokens/s | ... | ETA 5d 2h

    with the means of loss, lr and grad_norm since the last line, the throughput (see `Throughput`)
    and the time left at the last interval's pace. tokens/s and MFU also go to TensorBoard. A
    distillation run also shows the two terms of its loss, `label_loss` and `distill_loss` (trainer/step.py).
    """

    SCALARS = ("loss", "lr", "grad_norm")

    def __init__(self, config, throughput):
        self.scalars = self.SCALARS + (DISTILL_METRICS if config.distill.on else ())
        self._every = config.train.iterations
        self._train_steps = config.train.train_steps
        self._model_path = config.model_path
        self._throughput = throughput
        self._lock = threading.Lock()  # the host call may run in TPUEstimator's outfeed thread
        self.start(0)

    def start(self, step):
        """A new training chunk, resumed at `step`."""
        with self._lock:
            self._logged_step = self._step = step
            self._logged_time = time.perf_counter()
            self._sums, self._count = np.zeros(len(self.scalars)), 0

    def record(self, step, *values):
        """One step's scalars (called from the graph: see `summary_host_call`)."""
        with self._lock:
            self._step = int(step)
            self._sums += values
            self._count += 1
            if self._step % self._every == 0:
                self._log()

    def announce(self):
        self._throughput.announce()

    def end(self):
        """The chunk's last, partial interval; everything written."""
        with self._lock:
            if self._step > self._logged_step:
                self._log()
        tf.summary.FileWriterCache.get(self._model_path).flush()

    def _log(self):
        now = time.perf_counter()
        steps, seconds = self._step - self._logged_step, now - self._logged_time
        throughput, scalars = self._throughput.report(steps, seconds)
        means = " | ".join("%s %.4g" % (name, total / max(self._count, 1))
                           for name, total in zip(self.scalars, self._sums))
        left = (self._train_steps - self._step) * seconds / steps
        log.info("step %d/%d | %s | %s | ETA %s", self._step, self._train_steps, means, throughput, duration(left))
        writer = tf.summary.FileWriterCache.get(self._model_path)
        writer.add_summary(tf.Summary(value=[tf.Summary.Value(tag=tag, simple_value=value)
                                             for tag, value in scalars.items()]), self._step)
        self._logged_step, self._logged_time = self._step, now
        self._sums, self._count = np.zeros(len(self.scalars)), 0


def duration(seconds):
    """3725 -> "1h 2m": the two largest units."""
    parts = [(int(seconds // 86400), "d"), (int(seconds % 86400 // 3600), "h"), (int(seconds % 3600 // 60), "m"),
             (int(seconds % 60), "s")]
    shown = [(n, unit) for n, unit in parts if n][:2] or [(0, "s")]
    return " ".join("%d%s" % pair for pair in shown)


class ProgressHook(tf.train.SessionRunHook):
    """Starts `progress` at each training chunk's first step and logs its last, partial interval."""

    def __init__(self, progress, global_step):
        self._progress = progress
        self._global_step = global_step

    def begin(self):
        self._progress.announce()

    def after_create_session(self, session, coord):
        self._progress.start(session.run(self._global_step))

    def end(self, session):
        self._progress.end()


def summary_host_call(config, progress, step, loss, lr, grad_norm, grad_norms, metrics=None):
    """TPUEstimator host_call: every step, hand `step`, `loss`, `lr`, `grad_norm` and `metrics` ({name:
    scalar} in the order of Progress.scalars after those three: a distillation step's terms) to `progress`
    (the log line; None when the host call runs on another machine, a TPU node's host) and write them to
    TensorBoard; every `iterations` steps also `grad_norms` ({tag: norm}, empty without `log_grads`). It
    runs on the host, also on TPU, where the model's tensors reach it only as its arguments."""
    model_path = config.model_path
    every = config.train.iterations
    tags = list(grad_norms)
    names = Progress.SCALARS + tuple(metrics or {})

    def host_call(step, *values):
        scalars, norms = values[:len(names)], values[len(names):]
        logged = [tf.py_func(progress.record, [step[0]] + [x[0] for x in scalars], [], stateful=True)] \
            if progress else []
        with tf.compat.v2.summary.create_file_writer(model_path, max_queue=every).as_default():
            with tf.compat.v2.summary.record_if(True):
                for tag, value in zip(names, scalars):
                    tf.compat.v2.summary.scalar(tag, value[0], step=step[0])
            with tf.compat.v2.summary.record_if(tf.equal(step[0] % every, 0)):
                for tag, norm in zip(tags, norms):
                    tf.compat.v2.summary.scalar(tag, norm[0], step=step[0])
            return tf.summary.all_v2_summary_ops() + logged

    # host_call tensors need a leading batch-like dimension.
    return host_call, [tf.reshape(tf.cast(x, tf.float32) if x is not step else x, [1])
                       for x in [step, loss, lr, grad_norm] + list((metrics or {}).values())
                       + [grad_norms[tag] for tag in tags]]

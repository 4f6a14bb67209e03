"""Training progress: a log line every `iterations` steps and TensorBoard scalars."""
import logging
import time

from meshtf import tf
from trainer import flops

log = logging.getLogger("gptneo")


class Throughput:
    """Tokens/s, model TFLOP/s and MFU of one training run (FLOPs as counted in trainer/flops.py).

    Built once per run, so where the peak comes from (or that MFU is not reported, e.g. on CPU
    without --peak_tflops) is logged once, however many training chunks the run has.
    """

    def __init__(self, config, hardware):
        self._tokens_per_step = config.train.train_batch_size * config.model.n_ctx
        self._model_flops_per_token = flops.model_flops_per_token(config.model)
        # Differs from the model FLOPs only with recompute_grad; then utilisation is shown both ways.
        self._hardware_flops_per_token = flops.hardware_flops_per_token(config.model)
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


class TrainLogHook(tf.train.SessionRunHook):
    """Every `iterations` steps, and for the steps left when training stops between two such lines
    (a run shorter than `iterations`, the end of a chunk): log the means of the fetched scalars since the
    last log line, tokens/s, model TFLOP/s and MFU (see `Throughput`); write tokens/s and MFU to TensorBoard.

    On TPU the model's tensors live inside the TPU loop and cannot be fetched, so `tensors` is
    empty there and TPUEstimator logs the loss itself.
    """

    def __init__(self, config, global_step, tensors, throughput):
        self._every = config.train.iterations
        self._model_path = config.model_path
        self._global_step = global_step
        self._tensors = tensors
        self._throughput = throughput

    def begin(self):
        self._writer = tf.summary.FileWriterCache.get(self._model_path)
        self._throughput.announce()

    def after_create_session(self, session, coord):
        self._logged_step = self._step = session.run(self._global_step)
        self._logged_time = time.perf_counter()
        self._sums = dict.fromkeys(self._tensors, 0.0)

    def before_run(self, run_context):
        return tf.train.SessionRunArgs(self._tensors)

    def after_run(self, run_context, run_values):
        values = run_values.results
        # Read after the step: within the step's own run the read would race the increment
        # (and on TPU one run is a whole loop of steps).
        step = run_context.session.run(self._global_step)
        for key, value in values.items():
            self._sums[key] += value
        self._step = step
        if step % self._every == 0:
            self._log(step)

    def _log(self, step):
        now = time.perf_counter()
        steps = step - self._logged_step
        throughput, scalars = self._throughput.report(steps, now - self._logged_time)
        shown = " | ".join("%s %.4g" % (key, total / steps) for key, total in self._sums.items())
        self._sums = dict.fromkeys(self._tensors, 0.0)
        log.info("step %d | %s | %s", step, shown, throughput)
        self._writer.add_summary(tf.Summary(value=[
            tf.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]), step)
        self._logged_step, self._logged_time = step, now

    def end(self, session):
        if self._step > self._logged_step:
            self._log(self._step)
        self._writer.flush()


def summary_host_call(config, step, loss, lr, grad_norms):
    """TPUEstimator host_call writing `loss` and `lr` at `step`, and every `iterations` steps the scalars
    `grad_norms` ({tag: norm}, empty without `log_grads`). It runs on the host, also on TPU, where the
    model's tensors can only reach it as its arguments."""
    model_path = config.model_path
    every = config.train.iterations
    tags = list(grad_norms)

    def host_call(step, loss, lr, *norms):
        with tf.compat.v2.summary.create_file_writer(model_path, max_queue=every).as_default():
            with tf.compat.v2.summary.record_if(True):
                tf.compat.v2.summary.scalar("loss", loss[0], step=step[0])
                tf.compat.v2.summary.scalar("lr", lr[0], step=step[0])
            with tf.compat.v2.summary.record_if(tf.equal(step[0] % every, 0)):
                for tag, norm in zip(tags, norms):
                    tf.compat.v2.summary.scalar(tag, norm[0], step=step[0])
            return tf.summary.all_v2_summary_ops()

    # host_call tensors need a leading batch-like dimension.
    return host_call, [tf.reshape(x, [1]) for x in [step, loss, lr] + [grad_norms[tag] for tag in tags]]

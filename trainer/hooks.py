"""Training progress: a log line every `iterations` steps and TensorBoard scalars."""
import logging
import time

from meshtf import tf

log = logging.getLogger("gptneo")


class TrainLogHook(tf.train.SessionRunHook):
    """Every `iterations` steps: log the means of the fetched scalars since the last log line and
    tokens/sec; write tokens/sec to TensorBoard.

    On TPU the model's tensors live inside the TPU loop and cannot be fetched, so `tensors` is
    empty there and TPUEstimator logs the loss itself.
    """

    def __init__(self, config, global_step, tensors):
        self._every = config.train.iterations
        self._tokens_per_step = config.train.train_batch_size * config.model.n_ctx
        self._model_path = config.model_path
        self._global_step = global_step
        self._tensors = tensors

    def begin(self):
        self._writer = tf.summary.FileWriterCache.get(self._model_path)

    def after_create_session(self, session, coord):
        self._logged_step = session.run(self._global_step)
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
        if step % self._every:
            return
        now = time.perf_counter()
        steps = step - self._logged_step
        tokens_per_sec = self._tokens_per_step * steps / (now - self._logged_time)
        shown = " | ".join("%s %.4g" % (key, total / steps) for key, total in self._sums.items())
        self._sums = dict.fromkeys(self._tensors, 0.0)
        log.info("step %d | %s | %.0f tokens/s", step, shown, tokens_per_sec)
        self._writer.add_summary(tf.Summary(value=[tf.Summary.Value(
            tag="tokens_per_sec", simple_value=tokens_per_sec)]), step)
        self._logged_step, self._logged_time = step, now

    def end(self, session):
        self._writer.flush()


def summary_host_call(config, step, loss, lr):
    """TPUEstimator host_call writing `loss` and `lr` at `step` (runs on the host, also on TPU)."""
    model_path = config.model_path
    queue = config.train.iterations

    def host_call(step, loss, lr):
        with tf.compat.v2.summary.create_file_writer(model_path, max_queue=queue).as_default():
            with tf.compat.v2.summary.record_if(True):
                tf.compat.v2.summary.scalar("loss", loss[0], step=step[0])
                tf.compat.v2.summary.scalar("lr", lr[0], step=step[0])
                return tf.summary.all_v2_summary_ops()

    # host_call tensors need a leading batch-like dimension.
    return host_call, [tf.reshape(step, [1]), tf.reshape(loss, [1]), tf.reshape(lr, [1])]

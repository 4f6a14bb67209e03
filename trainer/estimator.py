"""TPUEstimator construction and the training loop."""
import logging

from tensorflow_estimator.python.estimator.tpu import tpu_config as tpu_config_lib
from tensorflow_estimator.python.estimator.tpu import tpu_estimator

from ..inputs.pipeline import input_fn_for
from .checkpoints import latest_step
from .guards import NonFiniteLossHook, SignalStop, StoppedEarly
from .model_fn import build_model_fn

log = logging.getLogger("gptneo")


def build_estimator(config, hardware, steps_per_checkpoint, cluster=None, min_prompt_length=1, master=None):
    """The TPUEstimator; `cluster` defaults to the TPU's resolver (None off TPU). `master` is the
    chief's server (grpc://...) on a cluster of processes (trainer/cluster.py).

    Generation prefills the first `min_prompt_length` - 1 positions, which every prompt must fill.
    """
    t = config.train
    tpu_config = tpu_config_lib.TPUConfig(
        iterations_per_loop=t.iterations,
        num_cores_per_replica=1,
        # On CPU/GPU leave num_shards unset: TPUEstimator warns that 1 is unsupported.
        num_shards=config.mesh.size if hardware.use_tpu else None,
        # The input runs once on host 0 and the whole global batch goes to the mesh.
        per_host_input_for_training=tpu_config_lib.InputPipelineConfig.BROADCAST)
    run_config = tpu_config_lib.RunConfig(
        cluster=cluster or hardware.cluster_resolver(),
        model_dir=config.model_path,
        # Given explicitly, as the cluster in the session config: TF_CONFIG would turn on the
        # Estimator's own distributed roles (parameter servers, evaluator), which this trainer does not use.
        master=master,
        # Our own sharded saver (see trainer/checkpoints.py) replaces the default one.
        save_checkpoints_steps=None,
        save_checkpoints_secs=None,
        log_step_count_steps=t.iterations,
        # The host call writes the summaries (trainer/hooks.py); the estimator's own would add a second
        # `loss` (as loss_1).
        save_summary_steps=None,
        session_config=hardware.session_config(),
        tpu_config=tpu_config)
    return tpu_estimator.TPUEstimator(
        use_tpu=hardware.use_tpu,
        model_fn=build_model_fn(config, hardware, steps_per_checkpoint),
        config=run_config,
        train_batch_size=t.train_batch_size,
        eval_batch_size=t.eval_batch_size or t.train_batch_size,
        predict_batch_size=t.predict_batch_size,
        eval_on_tpu=hardware.use_tpu,
        # --export serves on one device: a second, TPU-rewritten MetaGraph would make a plain
        # tf.saved_model.load(path) ask which of the two to load.
        export_to_tpu=False,
        params={"min_prompt_length": min_prompt_length})


def train(estimator, config, steps_per_checkpoint, evaluator=None, sample=None):
    """Train to `train_steps` (an absolute step), evaluating with `evaluator` (trainer/evaluation.py)
    every `steps_per_checkpoint` if the config asks for evaluation.

    `sample(step)`, if given (sampling during training, `predict_steps`), also runs every
    `steps_per_checkpoint` steps, before evaluating. Like evaluation it builds its own graph from the
    checkpoint, and the next chunk's input starts afresh at its step: training goes on as without it.

    Resumes from the newest complete checkpoint; the input skips the records already seen.
    SIGTERM or SIGINT stops training at the next step boundary with a checkpoint there (see
    trainer/guards.py) and raises StoppedEarly; no evaluation starts after it (one under way finishes). A
    non-finite loss raises NonFiniteError. Returns the list of evaluation results.
    """
    t = config.train
    step = latest_step(config.model_path)
    results = []
    if step >= t.train_steps:
        log.info("checkpoint in %s is at step %d >= train_steps %d: nothing to train",
                 config.model_path, step, t.train_steps)
    with SignalStop() as stop:
        hooks = [NonFiniteLossHook(config.model_path), stop.hook]
        while step < t.train_steps and not stop.received:
            chunked = t.evaluates or sample is not None
            target = min(step + steps_per_checkpoint, t.train_steps) if chunked else t.train_steps
            estimator.train(input_fn_for(config, "train", step), hooks=hooks, max_steps=target)
            step = latest_step(config.model_path)
            if sample is not None and not stop.received:
                sample(step)
            if t.evaluates and not stop.received:
                results += evaluator.run(estimator)
    if stop.received and step < t.train_steps:
        raise StoppedEarly("%s: stopped with a checkpoint at step %d in %s; run the same command to resume"
                           % (stop.received, step, config.model_path))
    return results


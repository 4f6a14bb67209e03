"""TPUEstimator construction and the train / evaluate loops."""
import json

from tensorflow_estimator.python.estimator.tpu import tpu_config as tpu_config_lib
from tensorflow_estimator.python.estimator.tpu import tpu_estimator

from inputs.sequential import input_fn_for
from meshtf import tf
from trainer.checkpoints import latest_step
from trainer.model_fn import build_model_fn


def build_estimator(config, hardware, steps_per_checkpoint, cluster=None):
    """The TPUEstimator; `cluster` defaults to the TPU's resolver (None off TPU)."""
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
        # Our own sharded saver (see trainer/checkpoints.py) replaces the default one.
        save_checkpoints_steps=None,
        save_checkpoints_secs=None,
        log_step_count_steps=t.iterations,
        save_summary_steps=t.iterations,
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
        params={})


def train(estimator, config, steps_per_checkpoint, log=print):
    """Train to `train_steps` (an absolute step), evaluating every `steps_per_checkpoint` if asked.

    Resumes from the newest checkpoint; the input skips the records already seen.
    Returns the list of evaluation results.
    """
    t = config.train
    step = latest_step(config.model_path)
    results = []
    if step >= t.train_steps:
        log("checkpoint in %s is at step %d >= train_steps %d: nothing to train"
            % (config.model_path, step, t.train_steps))
    while step < t.train_steps:
        target = min(step + steps_per_checkpoint, t.train_steps) if t.eval_steps > 0 else t.train_steps
        estimator.train(input_fn_for(config, "train", step), max_steps=target)
        step = target
        if t.eval_steps > 0:
            results.append(evaluate(estimator, config, log))
    return results


def evaluate(estimator, config, log=print):
    """Run `eval_steps` batches of the eval set; log and append the result to eval_results.jsonl."""
    result = estimator.evaluate(input_fn_for(config, "eval"), steps=config.train.eval_steps)
    result = {k: v.item() if hasattr(v, "item") else v for k, v in result.items()}
    log("eval at step %d: loss %.4f | cross-entropy %.4f | perplexity %.3f" % (
        result["global_step"], result["loss"], result["cross_entropy"], result["perplexity"]))
    path = config.model_path.rstrip("/") + "/eval_results.jsonl"
    existing = tf.io.gfile.GFile(path).read() if tf.io.gfile.exists(path) else ""
    # GCS objects cannot be appended to: rewrite the whole (small) file.
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(existing + json.dumps(dict(result, task="validation")) + "\n")
    return result

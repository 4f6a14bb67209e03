"""The TPUEstimator model_fn: build the Mesh-TF graph, lower it, and return train/eval specs."""
from tensorflow_estimator.python.estimator.mode_keys import ModeKeys
from tensorflow_estimator.python.estimator.tpu.tpu_estimator import TPUEstimatorSpec

from meshtf import mtf, tf
from models.dims import Dims
from models.gpt import gpt, token_losses
from trainer import checkpoints, hooks
from trainer.hardware import mesh_implementation
from trainer.optimizer import minimize

MODES = {ModeKeys.TRAIN: "train", ModeKeys.EVAL: "eval"}


def build_model_fn(config, hardware, steps_per_checkpoint):
    def model_fn(features, labels, mode, params):
        mode_name = MODES[mode]
        train = mode_name == "train"
        # Dropout masks are drawn from op-level seeds derived from this, so runs repeat.
        tf.set_random_seed(config.data.seed)
        global_step = tf.train.get_or_create_global_step()
        # Everything in this step reads the step number once, before the increment that the
        # train op runs last (resource-variable reads would otherwise race it).
        step = tf.identity(global_step.read_value())

        graph = mtf.Graph()
        mesh_impl, placer = mesh_implementation(hardware, config.mesh, params)
        mesh = mtf.Mesh(graph, "mesh", placer)
        d = Dims.build(config.model, config.train.batch_size(mode_name))
        shape = mtf.Shape([d.batch, d.sequence])
        ids = mtf.import_fully_replicated(mesh, features, shape, name="ids")
        targets = mtf.import_fully_replicated(mesh, labels, shape, name="labels")

        logits = gpt(ids, d, config.model, train, config.data.seed)
        loss, cross_entropy = token_losses(logits, targets, d, config.model.z_loss)

        if train:
            updates, lr, grad_norm = minimize(loss, graph, config.train, step)
        else:
            mean_logits = mtf.reduce_mean(mtf.to_float(logits), output_shape=[d.batch])

        lowering = mtf.Lowering(graph, {mesh: mesh_impl}, autostack=True)
        tf_loss = tf.cast(lowering.export_to_tf_tensor(loss), tf.float32)
        restore_hook = mtf.MtfRestoreHook(lowering)

        if train:
            with tf.control_dependencies([lowering.lowered_operation(op) for op in updates]):
                train_op = tf.assign_add(global_step, 1)
            tf_grad_norm = lowering.export_to_tf_tensor(grad_norm)
            saver_hook = checkpoints.saver_hook(config, lowering, steps_per_checkpoint)
            logged = {} if hardware.use_tpu else {"loss": tf_loss, "lr": lr, "grad_norm": tf_grad_norm}
            training_hooks = [restore_hook, saver_hook, hooks.TrainLogHook(config, global_step, logged)]
            return TPUEstimatorSpec(
                mode, loss=tf_loss, train_op=train_op, training_hooks=training_hooks,
                host_call=hooks.summary_host_call(config, step + 1, tf_loss, lr))

        tokens_ce = lowering.export_to_tf_tensor(cross_entropy)
        tf_mean_logits = lowering.export_to_tf_tensor(mean_logits)
        return TPUEstimatorSpec(
            mode, loss=tf_loss, evaluation_hooks=[restore_hook],
            eval_metrics=(eval_metrics, [tokens_ce, tf_mean_logits]))

    return model_fn


def eval_metrics(cross_entropy, mean_logits):
    """Means over the whole eval run; perplexity = exp(mean cross-entropy).

    The estimator adds `loss` (the training objective, z-loss included) by itself.
    """
    ce_value, ce_update = tf.metrics.mean(cross_entropy)
    return {
        "cross_entropy": (ce_value, ce_update),
        "perplexity": (tf.exp(ce_value), tf.exp(ce_update)),
        "mean_logits": tf.metrics.mean(mean_logits),
    }

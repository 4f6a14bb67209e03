"""The TPUEstimator model_fn: build the Mesh-TF graph, lower it, and return train/eval specs."""
from tensorflow_estimator.python.estimator.mode_keys import ModeKeys
from tensorflow_estimator.python.estimator.tpu.tpu_estimator import TPUEstimatorSpec

from meshtf import mtf, tf
from models.dims import Dims
from models.gpt import gpt, token_losses
from models.sampling import generate
from trainer import checkpoints, hooks
from trainer.hardware import mesh_implementation
from trainer.optimizer import minimize

MODES = {ModeKeys.TRAIN: "train", ModeKeys.EVAL: "eval", ModeKeys.PREDICT: "predict"}


def build_model_fn(config, hardware, steps_per_checkpoint):
    def model_fn(features, labels, mode, params):
        mode_name = MODES[mode]
        # Dropout masks are drawn from op-level seeds derived from this, so runs repeat.
        tf.set_random_seed(config.data.seed)
        mesh_impl, placer = mesh_implementation(hardware, config.mesh, params)
        mesh = mtf.Mesh(mtf.Graph(), "mesh", placer)
        d = Dims.build(config.model, config.train.batch_size(mode_name))
        if mode_name == "predict":
            return _predict_spec(features, mesh, mesh_impl, d)
        shape = mtf.Shape([d.batch, d.sequence])
        ids = mtf.import_fully_replicated(mesh, features, shape, name="ids")
        targets = mtf.import_fully_replicated(mesh, labels, shape, name="labels")
        logits = gpt(ids, d, config.model, mode_name == "train", config.data.seed)
        loss, cross_entropy = token_losses(logits, targets, d, config.model.z_loss)
        if mode_name == "train":
            return _train_spec(loss, mesh, mesh_impl)
        return _eval_spec(loss, cross_entropy, logits, mesh, mesh_impl, d)

    def _train_spec(loss, mesh, mesh_impl):
        global_step = tf.train.get_or_create_global_step()
        # Everything in this step reads the step number once, before the increment that the
        # train op runs last (resource-variable reads would otherwise race it).
        step = tf.identity(global_step.read_value())
        updates, lr, grad_norm = minimize(loss, mesh.graph, config.train, step)
        lowering = mtf.Lowering(mesh.graph, {mesh: mesh_impl}, autostack=True)
        tf_loss = tf.cast(lowering.export_to_tf_tensor(loss), tf.float32)
        with tf.control_dependencies([lowering.lowered_operation(op) for op in updates]):
            train_op = tf.assign_add(global_step, 1)
        logged = {} if hardware.use_tpu else {
            "loss": tf_loss, "lr": lr, "grad_norm": lowering.export_to_tf_tensor(grad_norm)}
        training_hooks = [mtf.MtfRestoreHook(lowering), checkpoints.saver_hook(config, lowering, steps_per_checkpoint),
                          hooks.TrainLogHook(config, global_step, logged)]
        return TPUEstimatorSpec(ModeKeys.TRAIN, loss=tf_loss, train_op=train_op, training_hooks=training_hooks,
                                host_call=hooks.summary_host_call(config, step + 1, tf_loss, lr),
                                scaffold_fn=checkpoints.restore_scaffold_fn(config.model_path, hooks.log.info))

    def _eval_spec(loss, cross_entropy, logits, mesh, mesh_impl, d):
        mean_logits = mtf.reduce_mean(mtf.to_float(logits), output_shape=[d.batch])
        # The SIMD (TPU) mesh exports only fully replicated tensors.
        cross_entropy, mean_logits = mtf.anonymize(cross_entropy), mtf.anonymize(mean_logits)
        lowering = mtf.Lowering(mesh.graph, {mesh: mesh_impl}, autostack=True)
        tensors = [lowering.export_to_tf_tensor(x) for x in (cross_entropy, mean_logits)]
        return TPUEstimatorSpec(ModeKeys.EVAL, loss=tf.cast(lowering.export_to_tf_tensor(loss), tf.float32),
                                evaluation_hooks=[mtf.MtfRestoreHook(lowering)], eval_metrics=(eval_metrics, tensors),
                                scaffold_fn=checkpoints.restore_scaffold_fn(config.model_path, hooks.log.info))

    def _predict_spec(features, mesh, mesh_impl, d):
        """Samples for {"ids", "lengths"}; logits for {"ids"} alone (the exported logits model)."""
        ids = mtf.import_fully_replicated(mesh, features["ids"], mtf.Shape([d.batch, d.sequence]), name="ids")
        if "lengths" not in features:
            logits = mtf.anonymize(mtf.to_float(gpt(ids, d, config.model, False, config.data.seed)))
            lowering = mtf.Lowering(mesh.graph, {mesh: mesh_impl}, autostack=True)
            return TPUEstimatorSpec(ModeKeys.PREDICT, prediction_hooks=[mtf.MtfRestoreHook(lowering)],
                                    scaffold_fn=_restore_and_fill_slices(lowering),
                                    predictions={"logits": lowering.export_to_tf_tensor(logits)})
        lengths = mtf.import_fully_replicated(mesh, features["lengths"], mtf.Shape([d.batch]), name="lengths")
        sampling = config.predict.sampling(config.data.seed)
        samples = mtf.anonymize(generate(ids, lengths, d, config.model, sampling, config.data.eos_id,
                                         config.data.seed))
        lowering = mtf.Lowering(mesh.graph, {mesh: mesh_impl}, autostack=True)
        return TPUEstimatorSpec(ModeKeys.PREDICT, prediction_hooks=[mtf.MtfRestoreHook(lowering)],
                                scaffold_fn=_restore_and_fill_slices(lowering),
                                predictions={"ids": lowering.export_to_tf_tensor(samples)})

    def _restore_and_fill_slices(lowering):
        """Restore (see checkpoints.restore_scaffold_fn), then fill the per-device slices from the
        masters in the local init op, which a SavedModel runs at load time (it holds only masters)."""
        return checkpoints.restore_scaffold_fn(config.model_path, hooks.log.info, lowering.copy_masters_to_slices)

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

"""The TPUEstimator model_fn: build the Mesh-TF graph, lower it, and return train/eval specs."""
import dataclasses

from tensorflow_estimator.python.estimator.mode_keys import ModeKeys
from tensorflow_estimator.python.estimator.tpu.tpu_estimator import TPUEstimatorSpec

from ..meshtf import mtf, tf
from ..models.context import Context
from ..models.dims import Dims
from ..models.gpt import gpt, gpt_losses, variable_dtype
from ..models.sampling import generate
from . import checkpoints, distill, evaluation, hooks
from .config.schema import training_mesh
from .hardware import mesh_implementation
from .masters import Masters
from .optimizer import gradient_norms, minimize
from .spikes import LossSpikes
from .step import objective

MODES = {ModeKeys.TRAIN: "train", ModeKeys.EVAL: "eval", ModeKeys.PREDICT: "predict"}


def build_model_fn(config, hardware, steps_per_checkpoint):
    progress = hooks.Progress(config, hooks.Throughput(config, hardware))
    # Training and evaluation compute in the config's precision, sampling in predict_precision and
    # --export's logits model in float32 (a checkpoint's weights are cast at restore).
    dtype = variable_dtype(config.model.precision)

    def model_fn(features, labels, mode, params):
        mode_name = MODES[mode]
        # Initialisers' op-level seeds (models/layers.py) combine with this graph-level seed.
        tf.set_random_seed(config.data.seed)
        if mode_name == "train":
            # Everything in this step reads the step number once, before the increment that the
            # train op runs last (resource-variable reads would otherwise race it).
            step = tf.identity(tf.train.get_or_create_global_step().read_value())
        else:
            # Only MoE's "random" policy draws outside training: the same numbers for every
            # batch and checkpoint, so evaluations compare.
            step = tf.constant(0, tf.int64)
        # Mesh random ops (dropout, MoE's "random" policy) are keyed by the seed and the step, so
        # runs repeat and a resumed run draws what an uninterrupted one does.
        # Training lays out a distillation teacher too (training_mesh); the other modes run the student alone.
        mesh_config = {"predict": config.mesh.for_decoding(config.train.predict_batch_size),
                       "eval": config.mesh, "train": training_mesh(config)}[mode_name]
        mesh_impl, placer = mesh_implementation(hardware, mesh_config, params, config.data.seed, step)
        mesh = mtf.Mesh(mtf.Graph(), "mesh", placer)
        d = Dims.build(config.model, config.train.batch_size(mode_name))
        if mode_name == "predict":
            return _predict_spec(features, mesh, mesh_impl, d, params.get("min_prompt_length", 1))
        if mode_name == "eval":
            return _eval_spec(features, labels, mesh, mesh_impl, d)
        shape = mtf.Shape([d.batch, d.sequence])
        ids = mtf.import_fully_replicated(mesh, features, shape, name="ids")
        targets = mtf.import_fully_replicated(mesh, labels, shape, name="labels")
        teacher_checkpoint = distill.teacher_checkpoint(config) if config.distill.on else None
        loss, grads, metrics = objective(config, ids, targets, teacher_checkpoint)
        return _train_spec(loss, grads, metrics, mesh, mesh_impl, step)

    def _train_spec(loss, grads, metrics, mesh, mesh_impl, step):
        global_step = tf.train.get_or_create_global_step()
        spikes = LossSpikes(config, checkpoints.latest_step(config.model_path)) \
            if config.train.skip_loss_spike_factor else None
        applies = spikes.applies(loss) if spikes else None
        variables = mesh.graph.trainable_variables
        # TPU: mtf's elementwise Adam, which XLA fuses, and stacked variables; elsewhere Adam's fused kernel.
        fused = not hardware.use_tpu
        updates, lr, grad_norm = minimize(grads, variables, config.train, step, applies, fused)
        norms = _grad_norm_summaries(grads, variables, grad_norm) if config.train.log_grads else {}
        lowering = mtf.Lowering(mesh.graph, {mesh: mesh_impl}, autostack=not fused)
        tf_loss = tf.cast(lowering.export_to_tf_tensor(loss), tf.float32)
        step_ops = [lowering.lowered_operation(op) for op in updates]
        if spikes:
            step_ops.append(spikes.record(tf_loss, lowering.export_to_tf_tensor(applies)))
        with tf.control_dependencies(step_ops):
            train_op = tf.assign_add(global_step, 1)
        masters = Masters(lowering, mesh_impl)
        saver = checkpoints.saver_hook(config, masters.saver_listener(), steps_per_checkpoint,
                                       [spikes.saver_listener()] if spikes else [])
        training_hooks = [masters.fill_hook(), saver, hooks.ProgressHook(progress, global_step)]
        training_hooks += spikes.hooks() if spikes else []
        return TPUEstimatorSpec(ModeKeys.TRAIN, loss=tf_loss, train_op=train_op, training_hooks=training_hooks,
                                host_call=hooks.summary_host_call(
                                    config, progress if hardware.host_is_local else None, step + 1, tf_loss, lr,
                                    lowering.export_to_tf_tensor(grad_norm),
                                    {tag: lowering.export_to_tf_tensor(norm) for tag, norm in norms.items()},
                                    {name: lowering.export_to_tf_tensor(x) for name, x in metrics.items()}),
                                scaffold_fn=checkpoints.restore_scaffold_fn(config.model_path))

    def _eval_spec(features, labels, mesh, mesh_impl, d):
        """Validation metrics for features {"ids", "bytes"}, LAMBADA's for {"ids", "target_mask"}
        (see trainer/evaluation.py)."""
        shape = mtf.Shape([d.batch, d.sequence])
        ids = mtf.import_fully_replicated(mesh, features["ids"], shape, name="ids")
        targets = mtf.import_fully_replicated(mesh, labels, shape, name="labels")
        ctx = Context(d, config.model, train=False, seed=config.data.seed, dtype=dtype)
        loss, cross_entropy, logits = gpt_losses(ids, targets, ctx)
        if "target_mask" in features:
            target_mask = mtf.import_fully_replicated(mesh, features["target_mask"], shape, name="target_mask")
            loss, outputs = evaluation.lambada_outputs(cross_entropy, logits, targets, target_mask, d)
            metrics, inputs = evaluation.lambada_metrics, []
        else:
            outputs = evaluation.validation_outputs(cross_entropy, logits, targets, d)
            metrics, inputs = evaluation.validation_metrics, [features["bytes"]]
        # The SIMD (TPU) mesh exports only fully replicated tensors.
        outputs = [mtf.anonymize(x) for x in outputs]
        lowering = mtf.Lowering(mesh.graph, {mesh: mesh_impl}, autostack=True)
        tensors = [lowering.export_to_tf_tensor(x) for x in outputs] + inputs
        return TPUEstimatorSpec(ModeKeys.EVAL, loss=tf.cast(lowering.export_to_tf_tensor(loss), tf.float32),
                                evaluation_hooks=[Masters(lowering, mesh_impl).fill_hook()],
                                eval_metrics=(metrics, tensors),
                                scaffold_fn=checkpoints.restore_scaffold_fn(config.model_path))

    def _predict_spec(features, mesh, mesh_impl, d, min_prompt_length):
        """Samples for {"ids", "lengths"}; logits for {"ids"} alone (the exported logits model).

        Generation runs over the length of "ids" (see sampling.decode_length); logits over n_ctx.
        """
        sequence = mtf.Dimension(d.sequence.name, features["ids"].shape.as_list()[1])
        ids = mtf.import_fully_replicated(mesh, features["ids"], mtf.Shape([d.batch, sequence]), name="ids")
        ctx = Context(d, config.model, train=False, seed=config.data.seed)
        if "lengths" not in features:
            logits = mtf.anonymize(mtf.to_float(gpt(ids, ctx)))
            lowering = mtf.Lowering(mesh.graph, {mesh: mesh_impl}, autostack=True)
            return TPUEstimatorSpec(ModeKeys.PREDICT, prediction_hooks=[Masters(lowering, mesh_impl).fill_hook()],
                                    scaffold_fn=_restore_and_fill_slices(lowering),
                                    predictions={"logits": lowering.export_to_tf_tensor(logits)})
        lengths = mtf.import_fully_replicated(mesh, features["lengths"], mtf.Shape([d.batch]), name="lengths")
        ctx = dataclasses.replace(ctx, dtype=variable_dtype(config.predict.predict_precision, training=False))
        samples = mtf.anonymize(generate(ids, lengths, ctx, config.predict, config.data.eos_id, min_prompt_length))
        lowering = mtf.Lowering(mesh.graph, {mesh: mesh_impl}, autostack=True)
        return TPUEstimatorSpec(ModeKeys.PREDICT, prediction_hooks=[Masters(lowering, mesh_impl).fill_hook()],
                                scaffold_fn=_restore_and_fill_slices(lowering),
                                predictions={"ids": lowering.export_to_tf_tensor(samples)})

    def _restore_and_fill_slices(lowering):
        """Restore (see checkpoints.restore_scaffold_fn), then fill the per-device slices from the
        masters in the local init op, which a SavedModel runs at load time (it holds only masters)."""
        return checkpoints.restore_scaffold_fn(config.model_path, lowering.copy_masters_to_slices)

    return model_fn


def _grad_norm_summaries(grads, variables, grad_norm):
    """`log_grads`' TensorBoard tags and norms: each variable's gradient norm, before clipping (as the
    original's; the global one, `grad_norm`, is always written)."""
    return {"grad_norm/" + v.name: norm for v, norm in zip(variables, gradient_norms(grads))}

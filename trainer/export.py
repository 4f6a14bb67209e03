"""--export: SavedModels that TF Serving or tf.saved_model.load run, from the latest checkpoint.

Two models under `export_dir`, each in a timestamped directory the estimator creates:
  logits/    input_ids [predict_batch_size, n_ctx] int32 -> logits [.., n_ctx, n_vocab] float32
  generate/  input_ids, lengths [predict_batch_size] -> ids [.., n_ctx] (prompt + samples, the
             config's sampling settings baked in)
Both are built on one device: a serving machine runs the whole model, whatever mesh it trained on.
"""
import dataclasses

from meshtf import tf
from trainer.config import ConfigError, MeshConfig
from trainer.estimator import build_estimator
from trainer.hardware import Hardware


def _receiver(batch, n_ctx, with_lengths):
    def receiver_fn():
        ids = tf.placeholder(tf.int32, [batch, n_ctx], name="input_ids")
        features, inputs = {"ids": ids}, {"input_ids": ids}
        if with_lengths:
            lengths = tf.placeholder(tf.int32, [batch], name="lengths")
            features["lengths"] = inputs["lengths"] = lengths
        return tf.estimator.export.ServingInputReceiver(features, inputs)
    return receiver_fn


def export(config, export_dir):
    """Write both SavedModels; return {"logits": path, "generate": path}."""
    checkpoint = tf.train.latest_checkpoint(config.model_path)
    stored = tf.train.load_checkpoint(checkpoint).get_variable_to_dtype_map()
    if any(dtype != tf.float32 for name, dtype in stored.items() if name.startswith("gpt2/")):
        raise ConfigError("--export needs float32 master weights, but %s stores others; convert it first "
                          "(e.g. python -m convert.huggingface export, then import --dtype float32)" % checkpoint)
    single = dataclasses.replace(config, mesh=MeshConfig(mesh_shape=(("all", 1),), layout=()))
    estimator = build_estimator(single, Hardware("cpu", ("/cpu:0",)), steps_per_checkpoint=1)
    batch, n_ctx = config.train.predict_batch_size, config.model.n_ctx
    paths = {}
    for name, with_lengths in (("logits", False), ("generate", True)):
        path = estimator.export_saved_model("%s/%s" % (export_dir.rstrip("/"), name),
                                            _receiver(batch, n_ctx, with_lengths))
        paths[name] = path.decode() if isinstance(path, bytes) else path
    return paths

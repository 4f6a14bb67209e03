"""--export: SavedModels that TF Serving or tf.saved_model.load run, from the latest checkpoint.

Two models under `export_dir`, each in a timestamped directory the estimator creates:
  logits/    input_ids [predict_batch_size, n_ctx] int32 -> logits [.., n_ctx, n_vocab] float32
  generate/  input_ids, lengths [predict_batch_size] -> ids [.., n_ctx] (prompt + samples, the
             config's sampling settings baked in)
Both are built on one device: a serving machine runs the whole model, whatever mesh it trained on.
"""
import dataclasses
import os
import tempfile

import numpy as np

from ..meshtf import tf
from .checkpoints import latest_checkpoint, write_checkpoint
from .config import MeshConfig
from .estimator import build_estimator
from .hardware import Hardware


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
    with tempfile.TemporaryDirectory(prefix="gpt-neo-export-") as workdir:
        model_path = _servable_checkpoint_dir(latest_checkpoint(config.model_path), config.model, workdir)
        single = dataclasses.replace(config, model_path=model_path,
                                     mesh=MeshConfig(mesh_shape=(("all", 1),), layout=()))
        estimator = build_estimator(single, Hardware("cpu", ("/cpu:0",)), steps_per_checkpoint=1)
        batch, n_ctx = config.train.predict_batch_size, config.model.n_ctx
        paths = {}
        for name, with_lengths in (("logits", False), ("generate", True)):
            path = estimator.export_saved_model("%s/%s" % (export_dir.rstrip("/"), name),
                                                _receiver(batch, n_ctx, with_lengths))
            paths[name] = path.decode() if isinstance(path, bytes) else path
    return paths


def _servable_checkpoint_dir(checkpoint, model_config, workdir):
    """The directory of `checkpoint`, or of a float32 copy of its weights with wte cut to n_vocab
    rows when it stores them otherwise (bfloat16 masters, a padded vocab).

    A SavedModel keeps the variables as the export restored them, and the export restores with a
    plain saver: the dtype and shape adaptation training and --predict do at restore time would
    only run when the SavedModel loads, from a checkpoint it does not carry.
    """
    reader = tf.train.load_checkpoint(checkpoint)
    dtypes, shapes = reader.get_variable_to_dtype_map(), reader.get_variable_to_shape_map()
    weights = sorted(name for name in dtypes if name.startswith("gpt2/"))
    if all(dtypes[name] == tf.float32 for name in weights) and shapes["gpt2/wte"][0] == model_config.n_vocab:
        return os.path.dirname(checkpoint)

    def as_served(name):
        value = reader.get_tensor(name).astype(np.float32)
        return value[:model_config.n_vocab] if name == "gpt2/wte" else value

    write_checkpoint(workdir + "/model.ckpt", ((name, as_served(name)) for name in weights),
                     global_step=int(reader.get_tensor("global_step")))
    return workdir

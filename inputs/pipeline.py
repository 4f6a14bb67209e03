"""The Estimator input_fn of the config's `input_fn` (sequential_input or generic_text; its batches
masked for `mlm_training`, see inputs/mlm.py), and the check that a resumed run keeps the batch
size its data order was derived with.

Both inputs derive the data of step s from (seed, s × train_batch_size) alone, so training
resumed at step s feeds exactly the batches an uninterrupted run feeds from step s on. A resume
with another train_batch_size would feed other data; `<model_path>/data_state.json` records the
batch size so such a resume is refused with an explanation instead.
"""
from . import generic_text, mlm, sequential
from .sequential import DataError
from ..meshtf import tf
from ..storage import read_json, write_json

DATASET_FNS = {"sequential_input": sequential.dataset_fn, "generic_text": generic_text.dataset_fn}
DATA_STATE = "data_state.json"


def input_fn_for(config, mode, global_step=0):
    """An Estimator input_fn for `mode` ("train" or "eval"), training resumed at `global_step`."""
    if mode == "train":
        check_batch_size(config, global_step)
    build = DATASET_FNS[config.data.input_fn](config, mode, global_step)
    if config.model.mlm_training:
        build = mlm.masking(build, config, mode, global_step)

    def input_fn(params):
        del params  # TPUEstimator's batch size is the global batch, which the config already holds
        return build()

    return input_fn


def check_batch_size(config, global_step):
    """Refuse to resume at `global_step` with another train_batch_size than the recorded one;
    record it when starting (or when a checkpoint came without a record, e.g. from HuggingFace)."""
    path = config.model_path.rstrip("/") + "/" + DATA_STATE
    batch = config.train.train_batch_size
    if global_step > 0 and tf.io.gfile.exists(path):
        recorded = read_json(path, "data state")["train_batch_size"]
        if recorded != batch:
            raise DataError(
                "train_batch_size is %d but %s was trained with train_batch_size %d: resuming at step %d "
                "with another batch size feeds other data than an uninterrupted run would; set "
                "train_batch_size back to %d, or delete %s to go on with %d anyway"
                % (batch, config.model_path, recorded, global_step, recorded, path, batch))
        return
    tf.io.gfile.makedirs(config.model_path)
    write_json(path, {"train_batch_size": batch})

"""GPT-Neo JSON configs as one frozen, typed `Config`.

A model config keeps the original's flat keys, spread here over four groups (model, train, data,
mesh) plus sampling (predict). Every key is checked once, on loading, so the rest of the program
never sees a raw dict, a missing key or a wrong type:

    schema.py       the dataclasses, the values some keys take, and sizes derived from them
    loading.py      reading files and overrides, unknown keys, types, merging dataset configs
    validation.py   checks across keys: ranges, combinations, the layout against the mesh
"""
from ...errors import ConfigError
from .schema import (ATTENTION_KINDS, EVAL_TASKS, INPUT_FNS, PRECISIONS, SAMPLING_MODES, Config, DataConfig,
                     DatasetConfig, DatasetEntry, MeshConfig, ModelConfig, PredictConfig, TrainConfig, microbatches)
from .validation import validate
from .loading import (CONFIG_DIR, build_config, expand_attention_types, load_config, load_dataset_config, parse_layout,
                      parse_mesh_shape, parse_overrides, raw_config)

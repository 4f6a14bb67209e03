"""Reading a model config and its dataset configs (local or gs://), with KEY=VALUE overrides, into the
typed `Config`: unknown keys are refused (with a did-you-mean), values are checked against the fields'
types, dataset configs are merged in, and the result is validated (`trainer.config.validation`).

A model config (`configs/<name>.json` or a path) keeps the original's flat keys. Its `datasets` name
dataset configs (`configs/dataset_configs/<id>.json`, or a `dataset_configs` directory beside it).
"""
import dataclasses
import json
import os
import re
import typing
from typing import Optional

from ... import storage
from ...errors import ConfigError, did_you_mean
from ...meshtf import tf
from ...models.moe import MoeParams
from .schema import (ATTENTION_KINDS, Config, DataConfig, DatasetConfig, DatasetEntry, DistillConfig, MeshConfig,
                     ModelConfig, PredictConfig, TrainConfig)
from .validation import validate

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")

# Which keys a model config may hold: the fields of the groups its flat keys fill, and a few more.
GROUPS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "predict": PredictConfig,
          "distill": DistillConfig}
# Keys handled outside the groups' plain fields.
SPECIAL_KEYS = ("model_path", "mesh_shape", "layout")
DERIVED_KEYS = ("dataset_configs", "teacher", "teacher_layout")
# Fields filled from parsed values (above) rather than from a key's JSON value.
PARSED_FIELDS = ("attention_types", "datasets", "dataset_configs", "moe_params", "teacher", "teacher_layout")
REQUIRED = ("n_ctx", "n_embd", "n_head", "n_layer", "n_vocab", "attention_types", "mesh_shape",
            "layout", "model_path", "train_batch_size", "train_steps", "lr", "opt_name",
            "iterations", "datasets")
# Keys the original adds at run time; a config that sets them is confused.
RUNTIME_KEYS = ("dataset_configs", "num_cores", "auto_layout", "auto_layout_and_mesh_shape", "use_tpu", "gpu_ids",
                "steps_per_checkpoint", "predict", "export", "sampling_use_entmax",
                "slow_sampling", "mode", "num_microbatches", "context", "batch_size", "eval_task",
                "lambada_tokens_path", "lambada_n_steps", "causal")


def _all_model_keys():
    keys = list(SPECIAL_KEYS)
    for cls in GROUPS.values():
        keys += [f.name for f in dataclasses.fields(cls) if f.name not in DERIVED_KEYS]
    return keys


MODEL_KEYS = tuple(_all_model_keys())
DATASET_KEYS = tuple(f.name for f in dataclasses.fields(DatasetConfig) if f.name != "id")


def config_dirs():
    """Where named configs are found: `configs/` of the working directory (the original's rule, and where
    an installed package's users keep theirs), then the ones shipped in the package (the same in a clone)."""
    dirs = []
    for d in (os.path.abspath("configs"), CONFIG_DIR):
        if d not in dirs and os.path.isdir(d):
            dirs.append(d)
    return dirs


def resolve_model_path(name_or_path):
    """`--model` rule of the original: a `.json` name is a path, anything else a config's name."""
    if name_or_path.endswith(".json"):
        return name_or_path
    dirs = config_dirs()
    for d in dirs:
        path = os.path.join(d, name_or_path + ".json")
        if os.path.exists(path):
            return path
    known = sorted({n[:-5] for d in dirs for n in os.listdir(d) if n.endswith(".json")})
    raise ConfigError("no model config named %r in %s%s" % (
        name_or_path, " or ".join(dirs), did_you_mean(name_or_path, known)))


def dataset_config_dirs(model_config_path):
    """Dataset configs are looked up beside the model config first, then in the named configs' places."""
    dirs = [os.path.join(os.path.dirname(model_config_path), "dataset_configs")]
    dirs += [os.path.join(d, "dataset_configs") for d in config_dirs()]
    unique = []
    for d in dirs:
        if d not in unique and tf.io.gfile.isdir(d):
            unique.append(d)
    return unique


def load_config(name_or_path, overrides=None):
    """Read a model config and its dataset configs into a validated `Config`.

    `overrides` replaces top-level keys before validation (`key=value` arguments, flags, tests).
    """
    path = resolve_model_path(name_or_path)
    name = os.path.splitext(os.path.basename(path))[0]
    return build_config(raw_config(name_or_path, overrides), name, dataset_config_dirs(path))


def parse_overrides(items):
    """["n_layer=2", "mesh_shape=x:1,y:2"] -> {"n_layer": 2, "mesh_shape": "x:1,y:2"}: JSON values, else strings."""
    overrides = {}
    for item in items:
        key, equals, text = item.partition("=")
        if not equals or not key:
            raise ConfigError("%r is not KEY=VALUE: config keys are replaced as n_layer=2 (flags start with --)" % item)
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


def raw_config(name_or_path, overrides=None):
    """The model config's keys as the file has them, with `overrides` applied (what a run records)."""
    return dict(storage.read_json(resolve_model_path(name_or_path), "model config"), **(overrides or {}))


def build_config(raw, name, dataset_dirs):
    """Validate a flat dict of the original's keys (plus dataset lookup dirs) into a `Config`."""
    _check_keys(raw)
    missing = [k for k in REQUIRED if k not in raw or raw[k] is None]
    if missing:
        raise ConfigError("model config %s is missing required key(s): %s" % (name, ", ".join(missing)))

    values = dict(raw)
    values["attention_types"] = expand_attention_types(raw["attention_types"])
    values["moe_params"] = _parse_moe_params(raw.get("moe_params"))
    values["datasets"] = _parse_dataset_entries(raw["datasets"])
    if not values.get("no_dataset") and not values["datasets"]:
        raise ConfigError("`datasets` is empty: list at least one dataset id, e.g. [[\"pile\", null, null, null]]")
    dataset_configs = tuple(load_dataset_config(d, dataset_dirs)
                            for d in dict.fromkeys(e.id for e in values["datasets"]))
    values["dataset_configs"] = dataset_configs
    if dataset_configs:
        # As the original: the last listed dataset's ids win over the model config's.
        last = next(ds for ds in dataset_configs if ds.id == values["datasets"][-1].id)
        values["eos_id"] = last.eos_id
        values["padding_id"] = last.padding_id

    if raw.get("distill_teacher") is not None:
        teacher_path = _coerce("distill_teacher", raw["distill_teacher"], str)
        values["teacher"], values["teacher_layout"], teacher_model_path = load_teacher(teacher_path)
        if raw.get("distill_teacher_checkpoint") is None:
            values["distill_teacher_checkpoint"] = teacher_model_path

    groups = {group: _build_group(cls, values) for group, cls in GROUPS.items()}
    mesh = MeshConfig(mesh_shape=parse_mesh_shape(raw["mesh_shape"]),
                      layout=parse_layout(raw["layout"]))
    model_path = _coerce("model_path", raw["model_path"], str)
    config = Config(name=name, model_path=model_path, mesh=mesh, **groups)
    validate(config)
    return config


def load_teacher(path):
    """(ModelConfig, layout, model_path or None) of a distillation teacher's model config (`distill_teacher`,
    local or gs://): its model keys and its `layout`. It is a whole model config (ours, or the one
    convert.huggingface import writes), whose other keys must be known but are not read."""
    raw = storage.read_json(resolve_model_path(path), "teacher config (`distill_teacher`)")
    try:
        _check_keys(raw)
        missing = [k for k in ("n_ctx", "n_embd", "n_head", "n_layer", "n_vocab", "attention_types") if k not in raw]
        if missing:
            raise ConfigError("missing required key(s): %s" % ", ".join(missing))
        values = dict(raw, attention_types=expand_attention_types(raw["attention_types"]),
                      moe_params=_parse_moe_params(raw.get("moe_params")))
        model = _build_group(ModelConfig, values, source="its")
        layout = parse_layout(raw.get("layout") or "")
        model_path = _coerce("model_path", raw.get("model_path"), Optional[str], source="its")
    except ConfigError as e:
        raise ConfigError("teacher config %s (`distill_teacher`): %s" % (path, e)) from None
    return model, layout, model_path


def load_dataset_config(dataset_id, dirs):
    for d in dirs:
        path = os.path.join(d, dataset_id + ".json")
        if tf.io.gfile.exists(path):
            break
    else:
        known = sorted({os.path.splitext(os.path.basename(p))[0]
                        for d in dirs for p in tf.io.gfile.glob(os.path.join(d, "*.json"))})
        raise ConfigError("dataset %r has no config: looked for %s.json in %s%s" % (
            dataset_id, dataset_id, ", ".join(dirs) or "(no dataset_configs directory)",
            did_you_mean(dataset_id, known)))
    raw = storage.read_json(path, "dataset config")
    for key in raw:
        if key not in DATASET_KEYS:
            raise ConfigError("unknown key %r in dataset config %s%s" % (
                key, path, did_you_mean(key, DATASET_KEYS)))
    if "n_vocab" not in raw:
        raise ConfigError("dataset config %s is missing `n_vocab`" % path)
    return _build_group(DatasetConfig, dict(raw, id=dataset_id), source="dataset config %s" % path)


# ---------------------------------------------------------------------------------------------
# Parsing helpers


def expand_attention_types(value):
    """[[["global","local"], 6]] -> ("global","local", ...) ×6. A flat list of kinds is kept."""
    if not isinstance(value, list) or not value:
        raise ConfigError("`attention_types` must be a non-empty list like [[[\"global\", \"local\"], 6]]")
    if all(isinstance(v, str) for v in value):
        expanded = list(value)
    else:
        expanded = []
        for item in value:
            ok = (isinstance(item, list) and len(item) == 2 and isinstance(item[0], list)
                  and all(isinstance(k, str) for k in item[0]) and _is_int(item[1]) and item[1] >= 0)
            if not ok:
                raise ConfigError("`attention_types` entry %s is not [[kinds...], repeat], e.g. "
                                  "[[\"global\", \"local\"], 6]" % json.dumps(item))
            expanded += item[0] * item[1]
    for kind in expanded:
        if kind not in ATTENTION_KINDS:
            raise ConfigError("unknown attention type %r in `attention_types`; use one of %s%s" % (
                kind, ", ".join(ATTENTION_KINDS), did_you_mean(kind, ATTENTION_KINDS)))
    return tuple(expanded)


def _parse_dataset_entries(value):
    if not isinstance(value, list):
        raise ConfigError("`datasets` must be a list of dataset ids or [id, stitch, sampling_mode, weight] lists")
    entries = []
    for item in value:
        if isinstance(item, str):
            entries.append(DatasetEntry(item))
        elif isinstance(item, list) and 1 <= len(item) <= 4 and isinstance(item[0], str):
            stitch, mode, weight = (list(item[1:]) + [None, None, None])[:3]
            entries.append(DatasetEntry(
                item[0], _coerce("datasets stitch", stitch, Optional[int]),
                _coerce("datasets sampling_mode", mode, Optional[str]),
                _coerce("datasets weight", weight, Optional[float])))
        else:
            raise ConfigError("`datasets` entry %s must be a dataset id or [id, stitch, sampling_mode, weight]"
                              % json.dumps(item))
    return tuple(entries)


def _parse_moe_params(value):
    """`moe_params`: a JSON object of mesh-tf MoE hyper-parameters overriding the defaults (null = none)."""
    if value is None:
        return MoeParams()
    if not isinstance(value, dict):
        raise ConfigError("`moe_params` must be a JSON object of MoE hyper-parameters like "
                          "{\"moe_num_experts\": 8}, got %s" % json.dumps(value))
    known = [f.name for f in dataclasses.fields(MoeParams)]
    for key in value:
        if key not in known:
            raise ConfigError("unknown `moe_params` key `%s`%s (known: %s)" % (
                key, did_you_mean(key, known), ", ".join(known)))
    return _build_group(MoeParams, value, source="moe_params")


_SEPARATORS = r"[\s,;.]+"


def _parse_pairs(value, key, example):
    if not isinstance(value, str):
        raise ConfigError("`%s` must be a string like %r" % (key, example))
    pairs = []
    for token in re.split(_SEPARATORS, value.strip()):
        if not token:
            continue
        parts = token.split(":")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ConfigError("`%s` entry %r is not name:value (the whole value must look like %r)"
                              % (key, token, example))
        pairs.append((parts[0], parts[1]))
    return pairs


def parse_mesh_shape(value):
    pairs = _parse_pairs(value, "mesh_shape", "x:2,y:4")
    if not pairs:
        raise ConfigError("`mesh_shape` is empty: give at least one mesh dimension, e.g. \"all:1\"")
    shape = []
    for name, size in pairs:
        if not re.fullmatch("[0-9]+", size) or int(size) < 1:
            raise ConfigError("`mesh_shape` dimension %r has size %r; sizes are positive integers" % (name, size))
        if name in (n for n, _ in shape):
            raise ConfigError("`mesh_shape` names dimension %r twice" % name)
        shape.append((name, int(size)))
    return tuple(shape)


def parse_layout(value):
    layout = []
    for tensor_dim, mesh_dim in _parse_pairs(value, "layout", "batch:x,heads:y"):
        if tensor_dim in (t for t, _ in layout):
            raise ConfigError("`layout` maps tensor dimension %r twice; a tensor dimension goes to "
                              "at most one mesh dimension" % tensor_dim)
        layout.append((tensor_dim, mesh_dim))
    return tuple(layout)


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _type_name(t):
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string",
            dict: "a JSON object"}.get(t, str(t))


def _coerce(key, value, annotation, source="model config"):
    """Check a JSON value against a field's type annotation; return the typed value."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        return _coerce(key, value, [a for a in args if a is not type(None)][0], source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError("%s key `%s` must be a list, got %s" % (source, key, json.dumps(value)))
        return tuple(_coerce(key, v, args[0], source) for v in value)
    if annotation is float and _is_int(value):
        return float(value)
    ok = _is_int(value) if annotation is int else isinstance(value, annotation)
    if not ok:
        raise ConfigError("%s key `%s` must be %s, got %s (%s)" % (
            source, key, _type_name(annotation), json.dumps(value), type(value).__name__))
    return value


def _build_group(cls, values, source="model config"):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            value = values[f.name]
            if f.name in PARSED_FIELDS:
                kwargs[f.name] = value  # parsed above
            elif value is None and f.default is not dataclasses.MISSING and f.default is not None:
                kwargs[f.name] = f.default  # an explicit null means "the default", as in the original
            else:
                kwargs[f.name] = _coerce(f.name, value, hints[f.name], source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("%s is missing required key `%s`" % (source, f.name))
    return cls(**kwargs)


def _check_keys(raw):
    for key in raw:
        if key in MODEL_KEYS:
            continue
        if key in RUNTIME_KEYS:
            raise ConfigError("config key `%s` is set by the program at run time; remove it from the config" % key)
        raise ConfigError("unknown config key `%s`%s" % (key, did_you_mean(key, MODEL_KEYS)))

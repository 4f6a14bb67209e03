"""Load, merge and validate GPT-Neo JSON configs into one frozen, typed `Config`.

A model config (`configs/<name>.json` or a path, local or gs://) keeps the original's flat keys.
Its `datasets` name dataset configs (`configs/dataset_configs/<id>.json`). The flat keys are
spread over four groups (model, train, data, mesh); every key is validated here once, so the
rest of the program never sees a raw dict, a missing key or a wrong type.
"""
import dataclasses
import difflib
import json
import os
import re
import typing
from dataclasses import dataclass
from typing import Optional, Tuple

from meshtf import tf
from models import dims, moe
from inputs import lambada
from models.activations import ACTIVATIONS
from models.moe import MoeParams
from models.sampling import SamplingConfig

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
ATTENTION_KINDS = ("global", "local", "linear", "none")
INPUT_FNS = ("sequential_input", "generic_text")
SAMPLING_MODES = ("chunks", "documents_fixed", "documents_random")
EVAL_TASKS = ("lambada",)
PRECISIONS = ("float32", "bfloat16")  # see models.gpt.variable_dtype


class ConfigError(ValueError):
    """A configuration problem, worded for the user: what is wrong and how to fix it."""


# ---------------------------------------------------------------------------------------------
# The typed config. Field names are the original's JSON keys.


@dataclass(frozen=True)
class ModelConfig:
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    n_vocab: int
    attention_types: Tuple[str, ...]  # expanded, one entry per layer
    model: str = "GPT"
    local_attention_radius: int = 256
    embed_dropout: float = 0.0
    attn_dropout: float = 0.0
    res_dropout: float = 0.0
    activation_fn: str = "gelu"
    scale_by_depth: bool = False
    scale_by_in: bool = False
    z_loss: float = 1e-4
    precision: str = "float32"
    recompute_grad: bool = False
    # Experimental features of the original (validated in `_check_*`).
    mlm_training: bool = False  # masked-LM objective (inputs/mlm.py); attention sees both ways
    moe_layers: Optional[Tuple[int, ...]] = None
    moe_params: MoeParams = MoeParams()  # parsed from the key's JSON object (mesh-tf's hyper-parameters)
    moe_activation: str = "relu"
    axial_pos_emb: Optional[Tuple[int, ...]] = None
    rotary_emb: bool = False
    num_mem_kv: int = 0
    mlp_glu: bool = False
    scalenorm: bool = False
    rezero: bool = False
    macaron: bool = False
    share_parameters: bool = False
    no_weight_tie: bool = False
    entmax_loss: bool = False
    # The original's configs carry this key but never read it (all its models use GELU).
    activation_function: Optional[str] = None

    @property
    def head_size(self):
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class TrainConfig:
    train_batch_size: int
    train_steps: int
    lr: float
    opt_name: str
    iterations: int
    eval_batch_size: Optional[int] = None
    predict_batch_size: int = 1
    eval_steps: int = 0
    predict_steps: int = 0
    warmup_steps: int = 0
    lr_decay: Optional[str] = None
    lr_decay_end: Optional[int] = None
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    ada_epsilon1: float = 1e-30
    ada_epsilon2: float = 1e-3
    weight_decay: float = 0.0
    gradient_clipping: Optional[float] = None
    tokens_per_mb_per_replica: Optional[int] = None
    log_grads: bool = False
    eval_tasks: Tuple[str, ...] = ()
    lambada_path: Optional[str] = None  # new key: the LAMBADA JSONL, local or gs:// (inputs/lambada.py)
    # New keys: checkpoints kept (the original's fixed saver settings are the defaults).
    keep_checkpoint_max: int = 10
    keep_checkpoint_every_n_hours: float = 2.0  # also keep one per this many hours; 0 = none
    # New keys: skip the update of a step whose loss > factor × the mean of the previous `window` steps
    # (trainer/spikes.py); 0 = off.
    skip_loss_spike_factor: float = 0.0
    skip_loss_spike_window: int = 100

    def batch_size(self, mode):
        return {"train": self.train_batch_size, "eval": self.eval_batch_size,
                "predict": self.predict_batch_size}[mode]

    @property
    def evaluates(self):
        """Whether training stops every steps_per_checkpoint steps to evaluate."""
        return self.eval_steps > 0 or bool(self.eval_tasks)


@dataclass(frozen=True)
class PredictConfig:
    """Sampling (--predict). `temperature`, `top_k`, `top_p` and `num_samples` are new keys."""

    temperature: float = 0.9          # the original's fixed value; 0 = greedy
    top_k: int = 0                    # 0 = no top-k restriction
    top_p: float = 1.0                # 1 = no nucleus restriction
    predict_max_steps: Optional[int] = None  # new tokens per sample; None = up to n_ctx
    num_samples: int = 1              # samples per prompt
    remove_partial_sequences: bool = False   # output only the continuation, not the prompt
    entmax_sampling: bool = False     # new key (the original's flag): sample from 1.3-entmax, not softmax

    def sampling(self, seed):
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              max_new_tokens=self.predict_max_steps, seed=seed, entmax=self.entmax_sampling)


@dataclass(frozen=True)
class DatasetConfig:
    """One `configs/dataset_configs/<id>.json`."""

    id: str
    n_vocab: int
    path: Optional[str] = None
    eval_path: Optional[str] = None
    tokenizer_path: Optional[str] = None
    tokenizer_is_pretrained: bool = False
    eos_id: int = 1
    padding_id: int = 0
    lambada_tokens_path: Optional[str] = None


@dataclass(frozen=True)
class DatasetEntry:
    """One entry of the model config's `datasets` list: [id, stitch, sampling_mode, weight]."""

    id: str
    stitch: Optional[int] = None
    sampling_mode: Optional[str] = None
    weight: Optional[float] = None


@dataclass(frozen=True)
class DataConfig:
    datasets: Tuple[DatasetEntry, ...]
    dataset_configs: Tuple[DatasetConfig, ...] = ()  # resolved, in `datasets` order, unique
    input_fn: str = "sequential_input"
    seed: int = 1
    shuffle_input_filenames: bool = True
    no_dataset: bool = False
    # Inherited from the last dataset config, overriding the model config (as the original).
    eos_id: int = 1
    padding_id: int = 0
    mlm_mask_id: Optional[int] = None
    mlm_cls_token_id: Optional[int] = None
    mlm_mask_prob: float = 0.15
    mlm_same_token_prob: float = 0.10
    mlm_random_token_prob: float = 0.0
    mlm_mask_ignore_ids: Tuple[int, ...] = ()


@dataclass(frozen=True)
class MeshConfig:
    mesh_shape: Tuple[Tuple[str, int], ...]   # (mesh dim name, size), in order
    layout: Tuple[Tuple[str, str], ...]       # (tensor dim name, mesh dim name)

    @property
    def size(self):
        n = 1
        for _, size in self.mesh_shape:
            n *= size
        return n

    @property
    def shape_string(self):
        return ",".join("%s:%d" % pair for pair in self.mesh_shape)

    @property
    def layout_string(self):
        return ",".join("%s:%s" % pair for pair in self.layout)

    def mesh_dim_of(self, tensor_dim):
        return dict(self.layout).get(tensor_dim)

    def for_decoding(self, batch_size):
        """The layout sampling runs with, on the same mesh: this one without splits of lengths
        (dims.LENGTH_DIMS), so caches split by batch and heads as laid out, and without the split of
        `batch` when `batch_size` (predict_batch_size) does not divide over it: every device then
        samples the whole batch. Checkpoints store whole variables, so any layout restores them."""
        sizes = dict(self.mesh_shape)
        kept = tuple((t, m) for t, m in self.layout
                     if t not in dims.LENGTH_DIMS and not (t == dims.BATCH and batch_size % sizes[m]))
        return dataclasses.replace(self, layout=kept)


@dataclass(frozen=True)
class Config:
    name: str           # the model config's file stem; names logs
    model_path: str
    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    mesh: MeshConfig
    predict: PredictConfig = PredictConfig()


GROUPS = {"model": ModelConfig, "train": TrainConfig, "data": DataConfig, "predict": PredictConfig}
# Keys handled outside the groups' plain fields.
SPECIAL_KEYS = ("model_path", "mesh_shape", "layout")
DERIVED_DATA_KEYS = ("dataset_configs",)
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
        keys += [f.name for f in dataclasses.fields(cls) if f.name not in DERIVED_DATA_KEYS]
    return keys


MODEL_KEYS = tuple(_all_model_keys())
DATASET_KEYS = tuple(f.name for f in dataclasses.fields(DatasetConfig) if f.name != "id")


# ---------------------------------------------------------------------------------------------
# Loading


def read_json(path, what):
    if not tf.io.gfile.exists(path):
        raise ConfigError("%s %s does not exist" % (what, path))
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError("%s %s is not valid JSON: %s (line %d, column %d)"
                          % (what, path, e.msg, e.lineno, e.colno)) from None
    if not isinstance(value, dict):
        raise ConfigError("%s %s must hold a JSON object, not %s" % (what, path, type(value).__name__))
    return value


def resolve_model_path(name_or_path):
    """`--model` rule of the original: a `.json` name is a path, anything else a shipped config."""
    if name_or_path.endswith(".json"):
        return name_or_path
    path = os.path.join(CONFIG_DIR, name_or_path + ".json")
    if not os.path.exists(path):
        known = sorted(n[:-5] for n in os.listdir(CONFIG_DIR) if n.endswith(".json"))
        raise ConfigError("no model config named %r in %s%s" % (
            name_or_path, CONFIG_DIR, _did_you_mean(name_or_path, known, "config")))
    return path


def dataset_config_dirs(model_config_path):
    """Dataset configs are looked up beside the model config first, then among the shipped ones."""
    dirs = [os.path.join(os.path.dirname(model_config_path), "dataset_configs"),
            os.path.join(CONFIG_DIR, "dataset_configs")]
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
            raise ValueError("%r is not KEY=VALUE: config keys are replaced as n_layer=2 (flags start with --)" % item)
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


def raw_config(name_or_path, overrides=None):
    """The model config's keys as the file has them, with `overrides` applied (what a run records)."""
    return dict(read_json(resolve_model_path(name_or_path), "model config"), **(overrides or {}))


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

    groups = {group: _build_group(cls, values) for group, cls in GROUPS.items()}
    mesh = MeshConfig(mesh_shape=parse_mesh_shape(raw["mesh_shape"]),
                      layout=parse_layout(raw["layout"]))
    model_path = _coerce("model_path", raw["model_path"], str)
    config = Config(name=name, model_path=model_path, mesh=mesh, **groups)
    validate(config)
    return config


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
            _did_you_mean(dataset_id, known, "dataset")))
    raw = read_json(path, "dataset config")
    for key in raw:
        if key not in DATASET_KEYS:
            raise ConfigError("unknown key %r in dataset config %s%s" % (
                key, path, _did_you_mean(key, DATASET_KEYS, "key")))
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
                kind, ", ".join(ATTENTION_KINDS), _did_you_mean(kind, ATTENTION_KINDS, "type")))
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
                key, _did_you_mean(key, known, "key"), ", ".join(known)))
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
            if f.name in ("attention_types", "datasets", "dataset_configs", "moe_params"):
                kwargs[f.name] = value  # parsed above
            elif value is None and f.default is not dataclasses.MISSING and f.default is not None:
                kwargs[f.name] = f.default  # an explicit null means "the default", as in the original
            else:
                kwargs[f.name] = _coerce(f.name, value, hints[f.name], source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError("%s is missing required key `%s`" % (source, f.name))
    return cls(**kwargs)


def _did_you_mean(word, candidates, what):
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return "; did you mean %r?" % close[0] if close else ""


def _check_keys(raw):
    for key in raw:
        if key in MODEL_KEYS:
            continue
        if key in RUNTIME_KEYS:
            raise ConfigError("config key `%s` is set by the program at run time; remove it from the config" % key)
        raise ConfigError("unknown config key `%s`%s" % (key, _did_you_mean(key, MODEL_KEYS, "key")))


# ---------------------------------------------------------------------------------------------
# Validation of the assembled config


def validate(config):
    m, t, d = config.model, config.train, config.data
    for key in ("n_ctx", "n_embd", "n_head", "n_layer", "n_vocab", "train_batch_size", "iterations",
                "local_attention_radius", "keep_checkpoint_max", "skip_loss_spike_window"):
        group = m if hasattr(m, key) else t
        if getattr(group, key) < 1:
            raise ConfigError("`%s` must be at least 1, got %d" % (key, getattr(group, key)))
    for key in ("embed_dropout", "attn_dropout", "res_dropout"):
        if not 0 <= getattr(m, key) < 1:
            raise ConfigError("`%s` is a dropout rate and must be in [0, 1), got %g" % (key, getattr(m, key)))
    if m.n_embd % m.n_head:
        raise ConfigError("`n_embd` (%d) must be divisible by `n_head` (%d): head size = n_embd / n_head"
                          % (m.n_embd, m.n_head))
    if len(m.attention_types) != m.n_layer:
        raise ConfigError("`attention_types` expands to %d layers but `n_layer` is %d; make the repeat "
                          "counts add up to n_layer" % (len(m.attention_types), m.n_layer))
    if m.model != "GPT":
        raise ConfigError("`model` must be \"GPT\" (the only model GPT-Neo has), got %r" % m.model)
    if t.train_steps < 0 or t.eval_steps < 0 or t.warmup_steps < 0:
        raise ConfigError("`train_steps`, `eval_steps` and `warmup_steps` must not be negative")
    if t.lr < 0:
        raise ConfigError("`lr` must not be negative, got %g" % t.lr)
    # Random ops are keyed by int32 seeds (TPUs take no wider keys).
    if not 0 <= d.seed < 2 ** 31:
        raise ConfigError("`seed` must be between 0 and 2147483647, got %d" % d.seed)
    if t.lr_decay not in (None, "linear", "cosine"):
        raise ConfigError("`lr_decay` must be \"linear\", \"cosine\" or null, got %r" % t.lr_decay)
    if t.opt_name.lower() not in ("adam", "adafactor"):
        raise ConfigError("`opt_name` must be \"adam\" or \"adafactor\", got %r (the original silently "
                          "chose Adafactor for any other value)" % t.opt_name)
    p = config.predict
    if p.temperature < 0 or p.top_k < 0 or not 0 < p.top_p <= 1 or p.num_samples < 1:
        raise ConfigError("sampling keys out of range: temperature >= 0 (0 = greedy), top_k >= 0 (0 = off), "
                          "0 < top_p <= 1, num_samples >= 1; got temperature %g, top_k %d, top_p %g, num_samples %d"
                          % (p.temperature, p.top_k, p.top_p, p.num_samples))
    if p.entmax_sampling and (p.top_k or p.top_p < 1):
        raise ConfigError("`entmax_sampling` samples from 1.3-entmax, which already gives unlikely tokens probability "
                          "0; top_k and top_p do not apply to it: set them to 0 and 1")
    if p.predict_max_steps is not None and p.predict_max_steps < 1:
        raise ConfigError("`predict_max_steps` must be at least 1 (or null for up to n_ctx)")
    if t.opt_name.lower() == "adafactor" and t.weight_decay:
        raise ConfigError("`weight_decay` is %g but Adafactor has no weight decay here (the original passed it "
                          "as Adafactor's decay rate by mistake); set it to 0 or use opt_name \"adam\""
                          % t.weight_decay)
    if t.gradient_clipping is not None and t.gradient_clipping <= 0:
        raise ConfigError("`gradient_clipping` must be positive (or omitted for no clipping)")
    if t.keep_checkpoint_every_n_hours < 0:
        raise ConfigError("`keep_checkpoint_every_n_hours` must not be negative (0 = keep none by age)")
    if t.skip_loss_spike_factor and (t.skip_loss_spike_factor <= 1 or t.opt_name.lower() != "adam"):
        raise ConfigError("`skip_loss_spike_factor` must be 0 (off) or above 1, with opt_name \"adam\" (Adafactor "
                          "cannot skip updates yet), got %g with %s" % (t.skip_loss_spike_factor, t.opt_name))
    for ds in d.dataset_configs:
        if ds.n_vocab > m.n_vocab:
            raise ConfigError("dataset %r was encoded with n_vocab %d but the model's `n_vocab` is %d; "
                              "set n_vocab >= %d" % (ds.id, ds.n_vocab, m.n_vocab, ds.n_vocab))
    _check_datasets(config.data)
    _check_supported(config)
    _check_eval_tasks(config)
    _check_mlm(config)
    _check_attention_features(config)
    _check_block(config.model)
    _check_layout(config)
    microbatches(config)


def _check_datasets(data):
    """`input_fn`, and the sampling fields of `datasets` entries, which generic_text reads (the
    sequential input reads only the ids)."""
    if data.input_fn not in INPUT_FNS:
        raise ConfigError("`input_fn` must be one of %s, got %r%s" % (
            ", ".join(INPUT_FNS), data.input_fn, _did_you_mean(data.input_fn, INPUT_FNS, "input")))
    if data.input_fn != "generic_text":
        return
    for e in data.datasets:
        if e.sampling_mode not in SAMPLING_MODES:
            raise ConfigError("`datasets` entry %r: generic_text needs a sampling_mode of %s, got %s%s" % (
                e.id, ", ".join(SAMPLING_MODES), json.dumps(e.sampling_mode),
                _did_you_mean(e.sampling_mode or "", SAMPLING_MODES, "mode")))
        if e.sampling_mode != "chunks" and (e.stitch is None or e.stitch < 1):
            raise ConfigError("`datasets` entry %r: %s needs stitch >= 1, the number of documents joined per "
                              "example (stitch x shortest document >= n_ctx + 1), got %s"
                              % (e.id, e.sampling_mode, json.dumps(e.stitch)))
        if e.weight is not None and e.weight <= 0:
            raise ConfigError("`datasets` entry %r: weight must be positive (null = 1), got %g; remove the "
                              "entry to leave the dataset out" % (e.id, e.weight))


def _check_supported(config):
    m = config.model
    if m.precision not in PRECISIONS:
        raise ConfigError("`precision` must be one of %s, got %s (the original silently trained any other value "
                          "in float32)" % (", ".join(map(json.dumps, PRECISIONS)), json.dumps(m.precision)))
    if m.activation_function not in (None, "gelu"):
        raise ConfigError("`activation_function` is %r, but GPT-Neo never read this key (its models "
                          "all use GELU); remove it, and set `activation_fn` to choose an activation"
                          % m.activation_function)


def microbatches(config):
    """Training microbatches per step: the tokens of one replica's batch (train_batch_size / the splits of
    `batch` by `layout`, × n_ctx) / `tokens_per_mb_per_replica`, whose gradients a step sums; 1 without the key.

    A microbatch holds whole examples, so the key must be a multiple of n_ctx dividing those tokens (the
    original rounded other values down to such a multiple silently).
    """
    t, n_ctx = config.train, config.model.n_ctx
    if t.tokens_per_mb_per_replica is None:
        return 1
    mesh_dim = config.mesh.mesh_dim_of(dims.BATCH)
    replicas = dict(config.mesh.mesh_shape)[mesh_dim] if mesh_dim else 1
    replica_batch = t.train_batch_size // replicas
    tokens = replica_batch * n_ctx
    if t.tokens_per_mb_per_replica <= 0 or t.tokens_per_mb_per_replica % n_ctx or tokens % t.tokens_per_mb_per_replica:
        valid = [examples * n_ctx for examples in range(1, replica_batch + 1) if replica_batch % examples == 0]
        raise ConfigError("`tokens_per_mb_per_replica` (%d) must be a multiple of n_ctx (%d) that divides the %d "
                          "tokens of a replica's batch (train_batch_size %d over %d replica(s) of `batch`): one of %s"
                          % (t.tokens_per_mb_per_replica, n_ctx, tokens, t.train_batch_size, replicas,
                             ", ".join(map(str, valid))))
    return tokens // t.tokens_per_mb_per_replica


def _check_eval_tasks(config):
    t = config.train
    for task in t.eval_tasks:
        if task not in EVAL_TASKS:
            raise ConfigError("unknown task %r in `eval_tasks` (known: %s)%s" % (
                task, ", ".join(EVAL_TASKS), _did_you_mean(task, EVAL_TASKS, "task")))
    if "lambada" not in t.eval_tasks:
        return
    if not t.lambada_path:
        raise ConfigError("`eval_tasks` lists lambada but `lambada_path` is not set: download %s and set "
                          "lambada_path to the file (local or gs://)" % lambada.URL)
    if config.model.mlm_training:
        raise ConfigError("LAMBADA scores next-word predictions, which a masked-LM model (`mlm_training`) does "
                          "not make; remove lambada from `eval_tasks`")


def _check_mlm(config):
    """The masked-LM keys, read when `mlm_training` is set (see inputs/mlm.py)."""
    m, d = config.model, config.data
    if not m.mlm_training:
        return
    if d.mlm_mask_id is None:
        raise ConfigError("`mlm_training` needs `mlm_mask_id`, the id put in place of masked tokens (e.g. one "
                          "the tokenizer does not use, below n_vocab)")
    for key in ("mlm_mask_id", "mlm_cls_token_id"):
        value = getattr(d, key)
        if value is not None and not 0 <= value < m.n_vocab:
            raise ConfigError("`%s` is %d, but ids must be in [0, n_vocab = %d)" % (key, value, m.n_vocab))
    if not 0 < d.mlm_mask_prob <= 1:
        raise ConfigError("`mlm_mask_prob` is the share of positions masked and must be in (0, 1], got %g"
                          % d.mlm_mask_prob)
    same, random = d.mlm_same_token_prob, d.mlm_random_token_prob
    if min(same, random) < 0 or same + random > 1:
        raise ConfigError("`mlm_same_token_prob` (%g) and `mlm_random_token_prob` (%g) are shares of the masked "
                          "positions: each at least 0 and together at most 1 (the rest get mlm_mask_id)"
                          % (same, random))
    if config.train.predict_steps > 0:
        raise ConfigError("`predict_steps` samples text during training, which a masked-LM model (`mlm_training`) "
                          "does not generate; set it to 0")


def _check_attention_features(config):
    """`axial_pos_emb`, `rotary_emb`, `num_mem_kv` (the original accepted bad values and failed
    inside the graph, or silently ignored them), and the layout of linear attention's decoding state,
    which the training graph preflight checks does not have."""
    m = config.model
    if "linear" in m.attention_types:
        state = (dims.BATCH, dims.HEADS, dims.FEATURES_PER_HEAD_IN, dims.FEATURES_PER_HEAD)
        mesh_dims = [config.mesh.mesh_dim_of(name) for name in state if config.mesh.mesh_dim_of(name)]
        if len(set(mesh_dims)) < len(mesh_dims):
            raise ConfigError("`layout` puts two of %s on one mesh dimension, but linear attention decodes with "
                              "a state that has all four; map them to different mesh dimensions" % ", ".join(state))
    if m.axial_pos_emb is not None:
        if m.rotary_emb:
            raise ConfigError("`axial_pos_emb` and `rotary_emb` are both set, but a model has one kind of "
                              "position embedding (the original silently used rotary); remove one")
        if len(m.axial_pos_emb) != 2 or min(m.axial_pos_emb) < 1:
            raise ConfigError("`axial_pos_emb` must be two positive sizes [rows, columns] of the position "
                              "grid, got %s" % json.dumps(list(m.axial_pos_emb)))
        rows, columns = m.axial_pos_emb
        if rows * columns < m.n_ctx:
            raise ConfigError("`axial_pos_emb` %s has %d positions but `n_ctx` is %d; rows x columns must be "
                              "at least n_ctx" % (json.dumps(list(m.axial_pos_emb)), rows * columns, m.n_ctx))
    if m.rotary_emb:
        if m.head_size % 2:
            raise ConfigError("`rotary_emb` turns pairs of a head's features, but the head size n_embd / n_head "
                              "= %d is odd; choose n_embd and n_head with an even head size" % m.head_size)
        if config.mesh.mesh_dim_of(dims.FEATURES_PER_HEAD):
            raise ConfigError("`rotary_emb` splits each head's features into halves, so `layout` cannot split "
                              "`features_per_head`; remove it from the layout")
    if m.num_mem_kv < 0:
        raise ConfigError("`num_mem_kv` must not be negative, got %d" % m.num_mem_kv)
    if m.num_mem_kv and "global" not in m.attention_types:
        raise ConfigError("`num_mem_kv` adds memory key/values to global attention layers, but "
                          "`attention_types` has none; remove num_mem_kv or add a global layer")


def _check_block(m):
    """Activations, norms and mixture-of-experts keys (the original failed inside the graph on bad
    values, or silently ignored them)."""
    for key in ("activation_fn", "moe_activation"):
        if getattr(m, key) not in ACTIVATIONS:
            raise ConfigError("`%s` %r is not an activation%s; known: %s" % (
                key, getattr(m, key), _did_you_mean(getattr(m, key), ACTIVATIONS, "activation"),
                ", ".join(ACTIVATIONS)))
    if m.rezero and m.scalenorm:
        raise ConfigError("`rezero` and `scalenorm` are both set, but ReZero removes the norms that scalenorm "
                          "replaces (the original silently ignored scalenorm); remove one")
    layers = [i for i in m.moe_layers or () if not 0 <= i < m.n_layer]
    if layers:
        raise ConfigError("`moe_layers` lists layer(s) %s, but the layers are numbered 0 to %d (n_layer - 1)"
                          % (", ".join(map(str, layers)), m.n_layer - 1))
    p = m.moe_params
    for key in ("moe_num_experts", "moe_hidden_size", "moe_group_size", "moe_min_expert_capacity"):
        if getattr(p, key) < 1:
            raise ConfigError("`moe_params` %s must be at least 1, got %d" % (key, getattr(p, key)))
    for key in ("moe_capacity_factor_train", "moe_capacity_factor_eval"):
        if getattr(p, key) <= 0:
            raise ConfigError("`moe_params` %s must be positive (an expert takes group size x factor / "
                              "experts tokens of a group), got %g" % (key, getattr(p, key)))
    if p.moe_loss_coef < 0 or min(p.moe_second_threshold_train, p.moe_second_threshold_eval) < 0:
        raise ConfigError("`moe_params` moe_loss_coef and moe_second_threshold_* must not be negative")
    if not 0 <= p.moe_dropout_rate < 1:
        raise ConfigError("`moe_params` moe_dropout_rate is a dropout rate and must be in [0, 1), got %g"
                          % p.moe_dropout_rate)
    for key in ("moe_second_policy_train", "moe_second_policy_eval"):
        if getattr(p, key) not in moe.SECOND_POLICIES:
            raise ConfigError("`moe_params` %s must be one of %s, got %r" % (
                key, ", ".join(moe.SECOND_POLICIES), getattr(p, key)))
    if p.moe_gating != "top_2":
        raise ConfigError("`moe_params` moe_gating must be \"top_2\" (GPT-Neo's gating), got %r" % p.moe_gating)
    if p.moe_use_experts_attention:
        raise ConfigError("`moe_params` moe_use_experts_attention is not part of GPT-Neo's block; set it to false")


def tensor_dim_sizes(config):
    """Size of each named dimension but `batch` (see `_check_batches`); `heads` has two sizes (n_head on
    activations, n_embd on weights)."""
    m = config.model
    sizes = {dims.SEQUENCE: [m.n_ctx], dims.MEMORY_LENGTH: [m.n_ctx], dims.EMBED_SEQUENCE: [m.n_ctx],
             dims.EMBD: [m.n_embd], dims.HEADS: [m.n_head, m.n_embd],
             dims.FEATURES_PER_HEAD: [m.head_size], dims.VOCAB: [m.n_vocab],
             dims.INTERMEDIATE_EXPANDED: [4 * m.n_embd],
             dims.FEATURES_PER_HEAD_IN: [m.head_size], dims.HALF_FEATURES_PER_HEAD: [m.head_size // 2]}
    if m.num_mem_kv:
        sizes[dims.MEM_KV_SEQUENCE] = [m.num_mem_kv]
    if m.axial_pos_emb:
        sizes[dims.AXIAL_DIM_0], sizes[dims.AXIAL_DIM_1] = [[size] for size in m.axial_pos_emb]
    if m.moe_layers:
        sizes[dims.EXPERTS] = sizes[dims.EXPERT_UNSPLIT] = [m.moe_params.moe_num_experts]
        sizes[dims.EXPERT_HIDDEN] = [m.moe_params.moe_hidden_size]
    return sizes


def _check_layout(config):
    mesh = dict(config.mesh.mesh_shape)
    sizes = tensor_dim_sizes(config)
    for tensor_dim, mesh_dim in config.mesh.layout:
        if tensor_dim not in dims.LAYOUT_DIMS:
            if tensor_dim in mesh:
                hint = "; layout entries are tensor_dim:mesh_dim, did you swap them?"
            else:
                hint = _did_you_mean(tensor_dim, dims.LAYOUT_DIMS, "dimension")
            raise ConfigError("`layout` names %r, which is not a model dimension (known: %s)%s" % (
                tensor_dim, ", ".join(dims.MODEL_DIMS), hint))
        if mesh_dim not in mesh:
            raise ConfigError("`layout` puts %r on mesh dimension %r, but `mesh_shape` (%s) has no "
                              "such dimension%s" % (tensor_dim, mesh_dim, config.mesh.shape_string,
                                                    _did_you_mean(mesh_dim, mesh, "dimension")))
        for size in sizes.get(tensor_dim, []):
            if size % mesh[mesh_dim]:
                raise ConfigError("`layout` splits %r (size %d) over mesh dimension %r of size %d, "
                                  "which does not divide it; change the config size or `mesh_shape`"
                                  % (tensor_dim, size, mesh_dim, mesh[mesh_dim]))
    _check_batches(config)


def _check_batches(config):
    """The batches of the modes a run uses split evenly over the mesh dimension `batch` is laid out on:
    training's always, evaluation's when the config evaluates. Sampling needs no check: it decodes with
    its own layout (`MeshConfig.for_decoding`)."""
    t = config.train
    mesh_dim = config.mesh.mesh_dim_of(dims.BATCH)
    keys = ["train_batch_size"] + (["eval_batch_size"] if t.evaluates else [])
    for key in keys:
        size = getattr(t, key)
        if not size:
            raise ConfigError("`%s` is not set; evaluation (`eval_steps` > 0 or `eval_tasks`) needs it" % key)
        splits = dict(config.mesh.mesh_shape)[mesh_dim] if mesh_dim else 1
        if size % splits:
            raise ConfigError("`%s` (%d) is not divisible by mesh dimension %r (%d) that `layout` splits batch "
                              "over; make it a multiple of %d or change `layout`" % (key, size, mesh_dim, splits,
                                                                                   splits))

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
from models import dims
from models.sampling import SamplingConfig

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
ATTENTION_KINDS = ("global", "local", "linear", "none")
SUPPORTED_ATTENTION_KINDS = ("global", "local")


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
    # Experimental features of the original: accepted with their defaults; other values are
    # rejected in `_check_supported` until they are implemented.
    mlm_training: bool = False
    moe_layers: Optional[Tuple[int, ...]] = None
    moe_params: Optional[dict] = None
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

    def batch_size(self, mode):
        return {"train": self.train_batch_size, "eval": self.eval_batch_size,
                "predict": self.predict_batch_size}[mode]


@dataclass(frozen=True)
class PredictConfig:
    """Sampling (--predict). `temperature`, `top_k`, `top_p` and `num_samples` are new keys."""

    temperature: float = 0.9          # the original's fixed value; 0 = greedy
    top_k: int = 0                    # 0 = no top-k restriction
    top_p: float = 1.0                # 1 = no nucleus restriction
    predict_max_steps: Optional[int] = None  # new tokens per sample; None = up to n_ctx
    num_samples: int = 1              # samples per prompt
    remove_partial_sequences: bool = False   # output only the continuation, not the prompt

    def sampling(self, seed):
        return SamplingConfig(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                              max_new_tokens=self.predict_max_steps, seed=seed)


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

    `overrides` replaces top-level keys before validation (used by tests and flags).
    """
    path = resolve_model_path(name_or_path)
    raw = read_json(path, "model config")
    raw.update(overrides or {})
    name = os.path.splitext(os.path.basename(path))[0]
    return build_config(raw, name, dataset_config_dirs(path))


def build_config(raw, name, dataset_dirs):
    """Validate a flat dict of the original's keys (plus dataset lookup dirs) into a `Config`."""
    _check_keys(raw)
    missing = [k for k in REQUIRED if k not in raw or raw[k] is None]
    if missing:
        raise ConfigError("model config %s is missing required key(s): %s" % (name, ", ".join(missing)))

    values = dict(raw)
    values["attention_types"] = expand_attention_types(raw["attention_types"])
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
            if f.name in ("attention_types", "datasets", "dataset_configs"):
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
                "local_attention_radius"):
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
    if t.eval_steps > 0 and not t.eval_batch_size:
        raise ConfigError("`eval_steps` is %d but `eval_batch_size` is not set" % t.eval_steps)
    if t.lr_decay not in (None, "linear", "cosine"):
        raise ConfigError("`lr_decay` must be \"linear\", \"cosine\" or null, got %r" % t.lr_decay)
    if t.opt_name.lower() not in ("adam", "adafactor"):
        raise ConfigError("`opt_name` must be \"adam\" or \"adafactor\", got %r (the original silently "
                          "chose Adafactor for any other value)" % t.opt_name)
    p = config.predict
    if p.temperature < 0 or p.top_k < 0 or not 0 < p.top_p <= 1 or p.num_samples < 1:
        raise ConfigError("sampling keys out of range: temperature >= 0 (0 = greedy), top_k >= 0 (0 = off), "
                          "0 < top_p <= 1, num_samples >= 1")
    if p.predict_max_steps is not None and p.predict_max_steps < 1:
        raise ConfigError("`predict_max_steps` must be at least 1 (or null for up to n_ctx)")
    if t.opt_name.lower() == "adafactor" and t.weight_decay:
        raise ConfigError("`weight_decay` is %g but Adafactor has no weight decay here (the original passed it "
                          "as Adafactor's decay rate by mistake); set it to 0 or use opt_name \"adam\""
                          % t.weight_decay)
    if t.gradient_clipping is not None and t.gradient_clipping <= 0:
        raise ConfigError("`gradient_clipping` must be positive (or omitted for no clipping)")
    for ds in d.dataset_configs:
        if ds.n_vocab > m.n_vocab:
            raise ConfigError("dataset %r was encoded with n_vocab %d but the model's `n_vocab` is %d; "
                              "set n_vocab >= %d" % (ds.id, ds.n_vocab, m.n_vocab, ds.n_vocab))
    _check_supported(config)
    _check_layout(config)


def _check_supported(config):
    m, t, d = config.model, config.train, config.data
    not_yet = []
    for key, default in (("mlm_training", False), ("moe_layers", None), ("axial_pos_emb", None),
                         ("rotary_emb", False), ("num_mem_kv", 0), ("mlp_glu", False),
                         ("scalenorm", False), ("rezero", False), ("macaron", False),
                         ("share_parameters", False), ("no_weight_tie", False),
                         ("entmax_loss", False), ("precision", "float32"),
                         ("activation_fn", "gelu")):
        if getattr(m, key) != default:
            not_yet.append("%s=%s" % (key, json.dumps(getattr(m, key))))
    if t.tokens_per_mb_per_replica is not None:
        not_yet.append("tokens_per_mb_per_replica=%d" % t.tokens_per_mb_per_replica)
    if t.eval_tasks:
        not_yet.append("eval_tasks=%s" % json.dumps(list(t.eval_tasks)))
    if d.input_fn != "sequential_input":
        not_yet.append("input_fn=%s" % json.dumps(d.input_fn))
    kinds = sorted(set(m.attention_types) - set(SUPPORTED_ATTENTION_KINDS))
    if kinds:
        not_yet.append("attention type(s) %s" % ", ".join(kinds))
    if not_yet:
        raise ConfigError("not supported by this version yet: %s; remove these keys (or use their "
                          "defaults) to train with global/local attention in float32"
                          % "; ".join(not_yet))
    if m.activation_function not in (None, "gelu"):
        raise ConfigError("`activation_function` is %r, but GPT-Neo never read this key (its models "
                          "all use GELU); remove it, and set `activation_fn` to choose an activation"
                          % m.activation_function)


def tensor_dim_sizes(config):
    """Size of each named dimension; `heads` has two sizes (n_head on activations, n_embd on weights)."""
    m = config.model
    sizes = {dims.SEQUENCE: [m.n_ctx], dims.MEMORY_LENGTH: [m.n_ctx], dims.EMBED_SEQUENCE: [m.n_ctx],
             dims.EMBD: [m.n_embd], dims.HEADS: [m.n_head, m.n_embd],
             dims.FEATURES_PER_HEAD: [m.head_size], dims.VOCAB: [m.n_vocab],
             dims.INTERMEDIATE_EXPANDED: [4 * m.n_embd],
             dims.BATCH: [b for b in (config.train.train_batch_size, config.train.eval_batch_size) if b]}
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


def check_batch_layout(config, mode):
    """The batch of `mode` must split evenly over the mesh dimension `batch` is laid out on."""
    size = config.train.batch_size(mode)
    if not size:
        raise ConfigError("`%s_batch_size` is not set" % mode)
    mesh_dim = config.mesh.mesh_dim_of(dims.BATCH)
    if mesh_dim and size % dict(config.mesh.mesh_shape)[mesh_dim]:
        raise ConfigError("`%s_batch_size` (%d) is not divisible by mesh dimension %r (%d) that "
                          "`layout` splits batch over" % (mode, size, mesh_dim,
                                                          dict(config.mesh.mesh_shape)[mesh_dim]))


def check_tokenizer_vocab(config, vocab_size, what):
    if vocab_size > config.model.n_vocab:
        raise ConfigError("the tokenizer (%s) has %d tokens but `n_vocab` is %d; set n_vocab >= %d"
                          % (what, vocab_size, config.model.n_vocab, vocab_size))


def to_dict(config):
    """The config as plain JSON-able data (for the TensorBoard snapshot and logs)."""
    return dataclasses.asdict(config)

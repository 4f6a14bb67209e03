"""The config loader on real files: every detectable mistake in a model or dataset config is one
`ConfigError` whose message names the key and says how to fix it; shipped configs load; the CLI
turns a bad config into a single `error: ...` line and exit status 2.

No TFRecords are made: loading a config never reads the data (`records_dir` points nowhere).
"""
import dataclasses
import glob
import json
import os
import re

import pytest
from conftest import REPO

from gpt_neo_mtf.cli import gpt_neo as main
from gpt_neo_mtf.trainer.preflight import preflight
from gpt_neo_mtf.trainer.config import (CONFIG_DIR, ConfigError, MeshConfig, expand_attention_types, load_config,
                                        parse_layout, parse_mesh_shape, parse_overrides)
from gpt_neo_mtf.trainer.hardware import select_hardware



@pytest.fixture
def tiny(make_config, tmp_path):
    """tiny(drop=(), **overrides) -> path of the tiny model config (tests/conftest.py TINY) with
    `overrides` applied and the keys in `drop` removed; its dataset config `sample` sits beside it."""

    def make(drop=(), **overrides):
        path = make_config("tiny", records_dir=str(tmp_path / "no_records"), **overrides)
        if drop:
            raw = json.loads(open(path).read())
            for key in drop:
                raw.pop(key, None)
            with open(path, "w") as f:
                f.write(json.dumps(raw))
        return path

    return make


@pytest.fixture
def write_dataset(tmp_path):
    """write_dataset(id, content) -> path of dataset_configs/<id>.json beside the tiny model config.

    `content` is a dict (written as JSON) or raw text."""

    def write(dataset_id, content):
        directory = tmp_path / "dataset_configs"
        directory.mkdir(exist_ok=True)
        path = directory / (dataset_id + ".json")
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    return write


def raises(pattern):
    return pytest.raises(ConfigError, match=pattern)


# ---------------------------------------------------------------------------------------------
# Files and names


def test_malformed_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "n_ctx": 32,\n  "n_embd": ,\n  "n_head": 4\n}\n')
    with raises("^model config %s is not valid JSON: Expecting value \\(line 3, column 13\\)$"
                % re.escape(str(path))):
        load_config(str(path))


def test_json_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with raises("^model config %s must hold a JSON object, not list$" % re.escape(str(path))):
        load_config(str(path))


def test_missing_model_config_file(tmp_path):
    path = str(tmp_path / "nope.json")
    with raises("^model config %s does not exist$" % re.escape(path)):
        load_config(path)


@pytest.mark.parametrize("name, suggestion", [
    ("gpt_neo_125m", "; did you mean 'gpt_neo_125M'?"),
    ("gpt_neo_1.3B", "; did you mean 'gpt_neo_1-3B'?"),
    ("bert", ""),  # nothing close: no suggestion
], ids=["case", "dot-for-dash", "no-suggestion"])
def test_config_name_not_in_configs(name, suggestion):
    with raises("^%s$" % re.escape("no model config named %r in %s%s" % (name, CONFIG_DIR, suggestion))):
        load_config(name)


def test_named_configs_are_found_in_the_working_directory_first(tmp_path, monkeypatch):
    """As the original: `--model NAME` and dataset ids look in ./configs/ (where an installed package's users
    keep theirs), then among the shipped configs."""
    os.makedirs(tmp_path / "configs" / "dataset_configs")
    with open(os.path.join(CONFIG_DIR, "gpt_neo_125M.json")) as f:
        raw = json.load(f)
    (tmp_path / "configs" / "mine.json").write_text(json.dumps(dict(raw, datasets=[["own", None, None, None]])))
    with open(os.path.join(CONFIG_DIR, "dataset_configs", "pile.json")) as f:
        (tmp_path / "configs" / "dataset_configs" / "own.json").write_text(f.read())
    monkeypatch.chdir(tmp_path)
    assert load_config("mine").data.dataset_configs[0].id == "own"
    assert load_config("gpt_neo_125M").name == "gpt_neo_125M"  # shipped, not shadowed
    with raises("^%s$" % re.escape("no model config named 'mien' in %s or %s; did you mean 'mine'?"
                                   % (tmp_path / "configs", CONFIG_DIR))):
        load_config("mien")


# ---------------------------------------------------------------------------------------------
# Keys and types of the model config

BAD_KEYS_AND_TYPES = [
    pytest.param({"n_heads": 4}, r"^unknown config key `n_heads`; did you mean 'n_head'\?$", id="n_heads"),
    pytest.param({"lr_decays": "cosine"}, r"^unknown config key `lr_decays`; did you mean 'lr_decay'\?$",
                 id="lr_decays"),
    pytest.param({"activation": "gelu"}, r"^unknown config key `activation`; did you mean 'activation_fn'\?$",
                 id="activation"),
    pytest.param({"frobnicate": 1}, r"^unknown config key `frobnicate`$", id="unknown-no-suggestion"),
    pytest.param({"num_cores": 8}, r"^config key `num_cores` is set by the program at run time; "
                                   r"remove it from the config$", id="runtime-num_cores"),
    pytest.param({"use_tpu": True}, r"^config key `use_tpu` is set by the program at run time",
                 id="runtime-use_tpu"),
    pytest.param({"causal": True}, r"^config key `causal` is set by the program at run time", id="runtime-causal"),
    pytest.param({"n_embd": "768"}, r'^model config key `n_embd` must be an integer, got "768" \(str\)$',
                 id="n_embd-string"),
    pytest.param({"n_layer": 2.5}, r"^model config key `n_layer` must be an integer, got 2\.5 \(float\)$",
                 id="n_layer-float"),
    pytest.param({"scale_by_depth": "yes"},
                 r'^model config key `scale_by_depth` must be true or false, got "yes" \(str\)$', id="bool-string"),
    pytest.param({"n_ctx": True}, r"^model config key `n_ctx` must be an integer, got true \(bool\)$", id="n_ctx-bool"),
    pytest.param({"train_batch_size": False},
                 r"^model config key `train_batch_size` must be an integer, got false \(bool\)$", id="batch-bool"),
    pytest.param({"lr": "6e-4"}, r'^model config key `lr` must be a number, got "6e-4" \(str\)$', id="lr-string"),
    pytest.param({"weight_decay": True}, r"^model config key `weight_decay` must be a number, got true \(bool\)$",
                 id="float-bool"),
    pytest.param({"opt_name": 1}, r"^model config key `opt_name` must be a string, got 1 \(int\)$", id="opt_name-int"),
    pytest.param({"eval_tasks": "lambada"}, r'^model config key `eval_tasks` must be a list, got "lambada"$',
                 id="eval_tasks-string"),
    pytest.param({"model_path": 7}, r"^model config key `model_path` must be a string, got 7 \(int\)$",
                 id="model_path-int"),
    pytest.param({"mesh_shape": 4}, r"^`mesh_shape` must be a string like 'x:2,y:4'$", id="mesh_shape-int"),
    pytest.param({"layout": ["batch:x"]}, r"^`layout` must be a string like 'batch:x,heads:y'$", id="layout-list"),
]


@pytest.mark.parametrize("overrides, pattern", BAD_KEYS_AND_TYPES)
def test_bad_key_or_type(tiny, overrides, pattern):
    with raises(pattern):
        load_config(tiny(**overrides))


@pytest.mark.parametrize("drop, nulls, missing", [
    (["n_layer"], {}, "n_layer"),
    ([], {"n_ctx": None}, "n_ctx"),
    (["model_path", "datasets"], {}, "model_path, datasets"),
    (["mesh_shape"], {"opt_name": None}, "mesh_shape, opt_name"),
], ids=["dropped", "null", "two-dropped", "dropped-and-null"])
def test_missing_required_key(tiny, drop, nulls, missing):
    with raises(r"^model config tiny is missing required key\(s\): %s$" % missing):
        load_config(tiny(drop=drop, **nulls))


def test_dataset_configs_is_a_runtime_key(tiny):
    with raises(r"^config key `dataset_configs` is set by the program at run time"):
        load_config(tiny(dataset_configs={}))


# ---------------------------------------------------------------------------------------------
# Values

BAD_VALUES = [
    pytest.param({"n_embd": 30},
                 r"^`n_embd` \(30\) must be divisible by `n_head` \(4\): head size = n_embd / n_head$",
                 id="n_embd-not-divisible"),
    pytest.param({"n_head": 0}, r"^`n_head` must be at least 1, got 0$", id="n_head-zero"),
    pytest.param({"iterations": 0}, r"^`iterations` must be at least 1, got 0$", id="iterations-zero"),
    pytest.param({"local_attention_radius": -1}, r"^`local_attention_radius` must be at least 1, got -1$",
                 id="radius-negative"),
    pytest.param({"n_layer": 3}, r"^`attention_types` expands to 2 layers but `n_layer` is 3; make the repeat "
                                 r"counts add up to n_layer$", id="attention-too-short"),
    pytest.param({"attention_types": [[["global", "local"], 2]]},
                 r"^`attention_types` expands to 4 layers but `n_layer` is 2", id="attention-too-long"),
    pytest.param({"model": "GPT2"}, r"^`model` must be \"GPT\" \(the only model GPT-Neo has\), got 'GPT2'$",
                 id="model"),
    pytest.param({"seed": 2 ** 31}, r"^`seed` must be between 0 and 2147483647, got 2147483648$", id="seed-too-big"),
    pytest.param({"train_steps": -1}, r"^`train_steps`, `eval_steps` and `warmup_steps` must not be negative$",
                 id="negative-steps"),
    pytest.param({"eval_steps": 5, "eval_batch_size": None},
                 r"^`eval_batch_size` is not set; evaluation \(`eval_steps` > 0 or `eval_tasks`\) needs it$",
                 id="eval-without-batch"),
    pytest.param({"lr_decay": "exponential"},
                 r"^`lr_decay` must be \"linear\", \"cosine\" or null, got 'exponential'$", id="lr_decay"),
    pytest.param({"opt_name": "sgd"}, r"^`opt_name` must be \"adam\" or \"adafactor\", got 'sgd' \(the original "
                                      r"silently chose Adafactor for any other value\)$", id="opt_name"),
    pytest.param({"gradient_clipping": 0}, r"^`gradient_clipping` must be positive", id="gradient_clipping"),
    pytest.param({"predict_precision": "float16"},
                 r'^`predict_precision` must be one of "float32", "bfloat16", got "float16"$', id="predict_precision"),
    pytest.param({"n_vocab": 50000}, r"^dataset 'sample' was encoded with n_vocab 50257 but the model's `n_vocab` "
                                     r"is 50000; set n_vocab >= 50257$", id="n_vocab-below-dataset"),
    pytest.param({"activation_function": "relu"},
                 r"^`activation_function` is 'relu', but GPT-Neo never read this key .*set `activation_fn`",
                 id="activation_function"),
]


@pytest.mark.parametrize("overrides, pattern", BAD_VALUES)
def test_bad_value(tiny, overrides, pattern):
    with raises(pattern):
        load_config(tiny(**overrides))


@pytest.mark.parametrize("key, value", [("embed_dropout", 1.0), ("attn_dropout", -0.1), ("res_dropout", 1.5)])
def test_dropout_out_of_range(tiny, key, value):
    with raises(r"`%s`.*\[0, 1\)|`%s` must be" % (key, key)):
        load_config(tiny(**{key: value}))


# ---------------------------------------------------------------------------------------------
# attention_types

ATTENTION_ENTRY = (r"^`attention_types` entry %s is not \[\[kinds\.\.\.\], repeat\], "
                   r"e\.g\. \[\[\"global\", \"local\"\], 6\]$")


@pytest.mark.parametrize("value, pattern", [
    ([[["gloabl", "local"], 1]], r"^unknown attention type 'gloabl' in `attention_types`; use one of "
                                 r"global, local, linear, none; did you mean 'global'\?$"),
    (["global", "lokal"], r"^unknown attention type 'lokal' .*; did you mean 'local'\?$"),
    ([[["sparse", "local"], 1]], r"^unknown attention type 'sparse' in `attention_types`; use one of "
                                 r"global, local, linear, none$"),
    ([["global", 2]], ATTENTION_ENTRY % re.escape('["global", 2]')),
    ([[["global", "local"]]], ATTENTION_ENTRY % re.escape('[["global", "local"]]')),
    ([[["global", "local"], "1"]], ATTENTION_ENTRY % re.escape('[["global", "local"], "1"]')),
    ([[["global", "local"], True]], ATTENTION_ENTRY % re.escape('[["global", "local"], true]')),
    ([[["global", "local"], -1]], ATTENTION_ENTRY % re.escape('[["global", "local"], -1]')),
    ([[["global", "local"], 1, 1]], ATTENTION_ENTRY % re.escape('[["global", "local"], 1, 1]')),
    ([[["global", 1], 1]], ATTENTION_ENTRY % re.escape('[["global", 1], 1]')),
    (["global", [["local"], 1]], ATTENTION_ENTRY % re.escape('"global"')),
    ([], r"^`attention_types` must be a non-empty list like \[\[\[\"global\", \"local\"\], 6\]\]$"),
    ("global", r"^`attention_types` must be a non-empty list"),
], ids=["typo-gloabl", "flat-typo", "unknown-no-suggestion", "pattern-not-list", "no-repeat", "repeat-string",
        "repeat-bool", "repeat-negative", "three-items", "kind-not-string", "mixed-flat", "empty", "string"])
def test_bad_attention_types(tiny, value, pattern):
    with raises(pattern):
        load_config(tiny(attention_types=value))


# ---------------------------------------------------------------------------------------------
# mesh_shape and layout


@pytest.mark.parametrize("mesh_shape, pattern", [
    ("x2", r"^`mesh_shape` entry 'x2' is not name:value \(the whole value must look like 'x:2,y:4'\)$"),
    ("x:1:2", r"^`mesh_shape` entry 'x:1:2' is not name:value"),
    (":2", r"^`mesh_shape` entry ':2' is not name:value"),
    ("x:", r"^`mesh_shape` entry 'x:' is not name:value"),
    ("x:0", r"^`mesh_shape` dimension 'x' has size '0'; sizes are positive integers$"),
    ("x:a", r"^`mesh_shape` dimension 'x' has size 'a'; sizes are positive integers$"),
    ("x:-1", r"^`mesh_shape` dimension 'x' has size '-1'; sizes are positive integers$"),
    ("x:1,x:1", r"^`mesh_shape` names dimension 'x' twice$"),
    ("", r"^`mesh_shape` is empty: give at least one mesh dimension, e\.g\. \"all:1\"$"),
    (" , ", r"^`mesh_shape` is empty"),
], ids=["no-colon", "two-colons", "no-name", "no-size", "zero", "letter", "negative", "duplicate", "empty",
        "only-separators"])
def test_bad_mesh_shape(tiny, mesh_shape, pattern):
    with raises(pattern):
        load_config(tiny(mesh_shape=mesh_shape))


def test_mesh_shape_unicode_digit():
    with raises(r"^`mesh_shape` dimension 'x' has size '²'; sizes are positive integers$"):
        parse_mesh_shape("x:²")


@pytest.mark.parametrize("overrides, pattern", [
    ({"layout": "head:x"}, r"^`layout` names 'head', which is not a model dimension \(known: batch, sequence, "
                           r".*\); did you mean 'heads'\?$"),
    ({"layout": "batch:x,vocabulary:x"}, r"^`layout` names 'vocabulary', .*; did you mean 'vocab'\?$"),
    ({"layout": "x:batch"}, r"^`layout` names 'x', which is not a model dimension .*; layout entries are "
                            r"tensor_dim:mesh_dim, did you swap them\?$"),
    ({"layout": "batch:y"}, r"^`layout` puts 'batch' on mesh dimension 'y', but `mesh_shape` \(x:1\) has no such "
                            r"dimension$"),
    ({"layout": "batch:xx"}, r"^`layout` puts 'batch' on mesh dimension 'xx', .*; did you mean 'x'\?$"),
    ({"layout": "batch:x,batch:x"}, r"^`layout` maps tensor dimension 'batch' twice; a tensor dimension goes to "
                                    r"at most one mesh dimension$"),
    ({"layout": "batch"}, r"^`layout` entry 'batch' is not name:value \(the whole value must look like "
                          r"'batch:x,heads:y'\)$"),
    ({"mesh_shape": "x:1,y:8", "layout": "batch:x,heads:y"},
     r"^`layout` splits 'heads' \(size 4\) over mesh dimension 'y' of size 8, which does not divide it; "
     r"change the config size or `mesh_shape`$"),
    ({"mesh_shape": "x:1,y:2", "layout": "batch:x,vocab:y"},
     r"^`layout` splits 'vocab' \(size 50257\) over mesh dimension 'y' of size 2, which does not divide it"),
    ({"mesh_shape": "x:2", "train_batch_size": 3},
     r"^`train_batch_size` \(3\) is not divisible by mesh dimension 'x' \(2\) that `layout` splits batch "
     r"over; make it a multiple of 2 or change `layout`$"),
    ({"mesh_shape": "x:4", "train_batch_size": 8, "eval_steps": 1, "eval_batch_size": 6},
     r"^`eval_batch_size` \(6\) is not divisible by mesh dimension 'x' \(4\)"),
    ({"mesh_shape": "x:1,y:3", "layout": "batch:x,embd:y"},
     r"^`layout` splits 'embd' \(size 32\) over mesh dimension 'y' of size 3"),
], ids=["unknown-dim-head", "unknown-dim-vocabulary", "swapped", "mesh-dim-missing", "mesh-dim-typo",
        "mapped-twice", "not-a-pair", "heads-4-over-8", "vocab-over-2", "train-batch", "eval-batch", "embd"])
def test_bad_layout(tiny, overrides, pattern):
    with raises(pattern):
        load_config(tiny(**overrides))


def test_layout_two_dims_of_one_tensor_on_one_mesh_dim(tiny):
    config = load_config(tiny(layout="embd:x,heads:x"))
    with raises(r"^`layout` puts both 'embd' and 'heads' on mesh dimension 'x', but the model has a tensor "
                r"with both \(gpt2/h0/attn/q"):
        preflight(config)


def test_unused_batch_sizes_need_not_divide(tiny):
    """eval_batch_size matters only when the config evaluates; predict_batch_size never blocks: sampling
    leaves batch whole when it does not divide (MeshConfig.for_decoding)."""
    config = load_config(tiny(mesh_shape="x:2", eval_steps=0, eval_batch_size=3, predict_batch_size=1))
    assert config.mesh.layout_string == "batch:x"
    assert config.mesh.for_decoding(1).layout_string == ""
    assert config.mesh.for_decoding(4).layout_string == "batch:x"


def test_decoding_layout_leaves_lengths_whole():
    mesh = MeshConfig(parse_mesh_shape("x:2,y:2"), parse_layout("batch:x,memory_length:y,embd:y,sequence:x"))
    assert mesh.for_decoding(2).layout_string == "batch:x,embd:y"


def test_overrides_are_json_values_or_strings():
    assert parse_overrides(["n_layer=2", "lr=1e-4", "scale_by_in=true", "lr_decay=null", "mesh_shape=x:1,y:2",
                            "layout=", 'attention_types=[[["global"],2]]']) == {
        "n_layer": 2, "lr": 1e-4, "scale_by_in": True, "lr_decay": None, "mesh_shape": "x:1,y:2", "layout": "",
        "attention_types": [[["global"], 2]]}
    with pytest.raises(ValueError, match="'n_layer' is not KEY=VALUE"):
        parse_overrides(["n_layer"])


def test_overrides_are_checked_like_the_file(tiny):
    with raises(r"^model config key `n_layer` must be an integer, got \"two\" \(str\)$"):
        load_config(tiny(), parse_overrides(["n_layer=two"]))
    with raises(r"^unknown config key `n_layyer`; did you mean 'n_layer'\?$"):
        load_config(tiny(), parse_overrides(["n_layyer=2"]))
    config = load_config(tiny(), parse_overrides(["n_layer=4", 'attention_types=[[["global"],4]]']))
    assert config.model.attention_types == ("global",) * 4


# ---------------------------------------------------------------------------------------------
# Datasets and dataset configs


def test_dataset_id_without_config(tiny, tmp_path):
    with raises(r"^dataset 'sampel' has no config: looked for sampel\.json in %s, %s; did you mean 'sample'\?$"
                % (re.escape(str(tmp_path / "dataset_configs")),
                   re.escape(os.path.join(CONFIG_DIR, "dataset_configs")))):
        load_config(tiny(datasets=[["sampel", None, None, None]]))


@pytest.mark.parametrize("datasets, pattern", [
    ([], r"^`datasets` is empty: list at least one dataset id"),
    ("sample", r"^`datasets` must be a list of dataset ids or \[id, stitch, sampling_mode, weight\] lists$"),
    ([[1, None, None, None]], r"^`datasets` entry \[1, null, null, null\] must be a dataset id or "
                              r"\[id, stitch, sampling_mode, weight\]$"),
    ([["sample", None, None, None, None]], r"^`datasets` entry .* must be a dataset id or \[id, stitch"),
    ([["sample", "25", None, None]], r"^model config key `datasets stitch` must be an integer, got \"25\" \(str\)$"),
], ids=["empty", "not-a-list", "id-not-string", "five-items", "stitch-string"])
def test_bad_datasets_list(tiny, datasets, pattern):
    with raises(pattern):
        load_config(tiny(datasets=datasets))


@pytest.mark.parametrize("content, pattern", [
    ({"n_vocabs": 50257}, r"^unknown key 'n_vocabs' in dataset config {path}; did you mean 'n_vocab'\?$"),
    ({"n_vocab": 50257, "tokenizer": "gpt2"},
     r"^unknown key 'tokenizer' in dataset config {path}; did you mean 'tokenizer_path'\?$"),
    ({"path": "x/*.tfrecords"}, r"^dataset config {path} is missing `n_vocab`$"),
    ('{"n_vocab": 50257,}', r"^dataset config {path} is not valid JSON: .*\(line 1, column \d+\)$"),
], ids=["n_vocabs", "tokenizer", "no-n_vocab", "malformed-json"])
def test_bad_dataset_config(tiny, write_dataset, content, pattern):
    model = tiny()
    path = write_dataset("sample", content)
    with raises(pattern.format(path=re.escape(path))):
        load_config(model)


def test_dataset_config_wrong_type_names_the_file(tiny, write_dataset):
    model = tiny()
    path = write_dataset("sample", {"n_vocab": 50257, "eos_id": "50256"})
    with raises(r"`eos_id`.*%s|%s.*`eos_id`" % (re.escape(path), re.escape(path))):
        load_config(model)


# ---------------------------------------------------------------------------------------------
# Mesh against the devices


def mesh(shape):
    return MeshConfig(mesh_shape=parse_mesh_shape(shape), layout=parse_layout(""))


@pytest.mark.parametrize("shape, kwargs, pattern", [
    ("x:2,y:2", dict(gpu_ids=["/gpu:0", "/gpu:1"], visible_gpus=4),
     r"^`mesh_shape` x:2,y:2 has 4 positions but --gpu_ids lists 2 device\(s\); give one device per mesh "
     r"position or change mesh_shape$"),
    ("x:2", dict(gpu_ids=["/gpu:0", "/gpu:1"], visible_gpus=0),
     r"^--gpu_ids names 2 GPU\(s\) but TensorFlow sees 0; check CUDA_VISIBLE_DEVICES"),
    ("x:4", dict(visible_gpus=2),
     r"^`mesh_shape` x:4 needs 4 devices but only 2 GPU\(s\) are visible; shrink mesh_shape or pass --gpu_ids$"),
], ids=["gpu_ids-count", "gpu_ids-not-visible", "mesh-larger-than-gpus"])
def test_mesh_does_not_fit_devices(shape, kwargs, pattern):
    with raises(pattern):
        select_hardware(mesh(shape), **kwargs)


def test_hardware_choice():
    assert select_hardware(mesh("x:8"), tpu="local").kind == "tpu"
    cpu = select_hardware(mesh("x:2,y:2"), visible_gpus=0)
    assert (cpu.kind, cpu.devices) == ("cpu", ("/cpu:0", "/cpu:1", "/cpu:2", "/cpu:3"))
    gpu = select_hardware(mesh("x:2"), visible_gpus=8)
    assert (gpu.kind, gpu.devices) == ("gpu", ("/device:GPU:0", "/device:GPU:1"))
    ids = select_hardware(mesh("x:2"), gpu_ids=["/gpu:3", "/gpu:1"], visible_gpus=4)
    assert (ids.kind, ids.devices) == ("gpu", ("/gpu:3", "/gpu:1"))


# ---------------------------------------------------------------------------------------------
# Configs that load


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.json"))),
                         ids=lambda p: os.path.basename(p))
def test_shipped_config_loads(path):
    config = load_config(path)
    assert config.name == os.path.splitext(os.path.basename(path))[0]
    assert len(config.model.attention_types) == config.model.n_layer


def test_load_by_name():
    config = load_config("gpt_neo_125M")
    assert config.name == "gpt_neo_125M"
    m = config.model
    assert (m.n_layer, m.n_embd, m.n_head, m.head_size, m.n_ctx, m.n_vocab) == (12, 768, 12, 64, 2048, 50257)
    assert m.attention_types == ("global", "local") * 6
    assert isinstance(m.embed_dropout, float) and m.embed_dropout == 0.0  # JSON 0 -> float
    assert config.mesh.mesh_shape == (("x", 4), ("y", 2)) and config.mesh.size == 8
    assert config.mesh.layout == (("batch", "x"), ("embd", "y"))
    assert config.train.lr_decay_end == 300000
    # The shipped configs/dataset_configs/pile.json; its ids replace the model config's defaults.
    assert [d.id for d in config.data.dataset_configs] == ["pile"]
    assert (config.data.eos_id, config.data.padding_id) == (50256, 50257)


def test_overrides_replace_keys(tiny):
    config = load_config(tiny(), {"n_layer": 4, "attention_types": [[["local"], 4]]})
    assert config.model.attention_types == ("local",) * 4


def test_dataset_found_among_shipped_configs(tiny):
    config = load_config(tiny(datasets=["pile"]))  # no pile.json beside the tiny config
    assert config.data.dataset_configs[0].path == "gs://your-bucket/pile/train/*.tfrecords"
    assert config.data.datasets[0].id == "pile"


def test_dataset_entries_parsed(tiny):
    config = load_config(tiny(datasets=["sample", ["sample", 25, "documents_random", 1]]))
    first, second = config.data.datasets
    assert (first.id, first.stitch, first.sampling_mode, first.weight) == ("sample", None, None, None)
    assert (second.stitch, second.sampling_mode, second.weight) == (25, "documents_random", 1.0)
    assert [d.id for d in config.data.dataset_configs] == ["sample"]  # duplicates collapse


@pytest.mark.parametrize("value, expected", [
    ([[["global", "local"], 12]], ("global", "local") * 12),
    ([[["global", "none", "none"], 5], [["none"], 4]], ("global", "none", "none") * 5 + ("none",) * 4),
    ([[["global"], 2], [["local"], 1], [["global", "local"], 0]], ("global", "global", "local")),
    (["local", "global"], ("local", "global")),
], ids=["alternating-24", "par-19", "several-and-zero", "flat"])
def test_expand_attention_types(value, expected):
    assert expand_attention_types(value) == expected


def test_attention_types_spec_examples():
    alternating = expand_attention_types([[["global", "local"], 12]])
    assert len(alternating) == 24 and alternating[0] == "global" and alternating[1] == "local"
    assert alternating[::2] == ("global",) * 12 and alternating[1::2] == ("local",) * 12
    par = expand_attention_types([[["global", "none", "none"], 5], [["none"], 4]])
    assert len(par) == 19 and [i for i, kind in enumerate(par) if kind == "global"] == [0, 3, 6, 9, 12]


def test_attention_types_expanded_in_loaded_config(tiny):
    config = load_config(tiny(n_layer=24, attention_types=[[["global", "local"], 12]]))
    assert config.model.attention_types == ("global", "local") * 12


@pytest.mark.parametrize("text", ["x:2,y:4", "x:2;y:4", "x:2.y:4", "x:2 y:4", " x:2 ,  y:4 ", "x:2;\ty:4,"],
                         ids=["comma", "semicolon", "dot", "space", "padded", "mixed"])
def test_mesh_shape_separators(tiny, text):
    assert parse_mesh_shape(text) == (("x", 2), ("y", 4))
    layout = text.replace("x:2", "batch:x").replace("y:4", "embd:y")
    config = load_config(tiny(mesh_shape=text, layout=layout))
    assert config.mesh.mesh_shape == (("x", 2), ("y", 4))
    assert (config.mesh.size, config.mesh.shape_string) == (8, "x:2,y:4")
    assert config.mesh.layout == (("batch", "x"), ("embd", "y"))
    assert config.mesh.layout_string == "batch:x,embd:y"
    assert config.mesh.mesh_dim_of("embd") == "y" and config.mesh.mesh_dim_of("vocab") is None


def test_empty_layout_is_replicated(tiny):
    assert load_config(tiny(mesh_shape="all:2", layout="")).mesh.layout == ()


def test_ids_come_from_the_last_dataset_config(tiny, write_dataset):
    write_dataset("other", {"n_vocab": 50000, "eos_id": 7, "padding_id": 9})
    write_dataset("bare", {"n_vocab": 100})
    config = load_config(tiny(datasets=[["sample", None, None, None], ["other", None, None, None]],
                              eos_id=3, padding_id=4))
    assert (config.data.eos_id, config.data.padding_id) == (7, 9)  # the model config's values lose
    assert [d.id for d in config.data.dataset_configs] == ["sample", "other"]
    config = load_config(tiny(datasets=["other", "bare"]))
    assert (config.data.eos_id, config.data.padding_id) == (1, 0)  # the defaults of a config without them


def test_ids_come_from_the_last_listed_dataset(tiny, write_dataset):
    write_dataset("other", {"n_vocab": 50000, "eos_id": 7, "padding_id": 9})
    config = load_config(tiny(datasets=["sample", "other", "sample"]))
    assert (config.data.eos_id, config.data.padding_id) == (50256, 50256)


def test_explicit_null_means_default(tiny):
    keys = ["local_attention_radius", "predict_batch_size", "eval_steps", "lr_decay", "z_loss", "beta2",
            "shuffle_input_filenames", "eval_tasks", "scale_by_depth", "gradient_clipping"]
    nulls = load_config(tiny(**{k: None for k in keys}))
    m, t, d = nulls.model, nulls.train, nulls.data
    assert (m.local_attention_radius, m.z_loss, m.scale_by_depth) == (256, 1e-4, False)
    assert (t.predict_batch_size, t.eval_steps, t.lr_decay, t.beta2, t.eval_tasks, t.gradient_clipping) == \
        (1, 0, None, 0.999, (), None)
    assert d.shuffle_input_filenames is True
    absent = load_config(tiny(drop=keys))
    assert (absent.model, absent.train, absent.data) == (m, t, d)


def test_config_is_immutable(tiny):
    config = load_config(tiny())
    for obj, key in [(config, "train"), (config.model, "n_layer"), (config.train, "lr"), (config.data, "eos_id"),
                     (config.mesh, "layout"), (config.data.dataset_configs[0], "n_vocab"),
                     (config.data.datasets[0], "id")]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, key, None)
    assert isinstance(config.model.attention_types, tuple) and isinstance(config.data.datasets, tuple)


# ---------------------------------------------------------------------------------------------
# Through the real CLI


@pytest.mark.parametrize("argv, message", [
    (lambda tiny: ["--model", tiny(mesh_shape="x:1,y:8", layout="batch:x,heads:y")],
     "`layout` splits 'heads' (size 4) over mesh dimension 'y' of size 8, which does not divide it; change the "
     "config size or `mesh_shape`"),
    (lambda tiny: ["--model", tiny(tokens_per_mb_per_replica=48)],
     "`tokens_per_mb_per_replica` (48) must be a multiple of n_ctx (32) that divides the 128 tokens of a replica's "
     "batch (train_batch_size 4 over 1 replica(s) of `batch`): one of 32, 64, 128"),
    (lambda tiny: ["--model", tiny(), "--gpu_ids", "/gpu:0", "/gpu:1"],
     "`mesh_shape` x:1 has 1 positions but --gpu_ids lists 2 device(s); give one device per mesh position or "
     "change mesh_shape"),
    (lambda tiny: ["--model", tiny(eval_steps=0), "--eval"],
     "--eval needs `eval_steps` > 0 (the number of eval batches) and `eval_batch_size`, or `eval_tasks`"),
], ids=["layout", "microbatch", "gpu_ids", "eval-without-steps"])
def test_cli_reports_one_error_line(tiny, capsys, argv, message):
    assert main.main(argv(tiny)) == 2
    err = capsys.readouterr().err
    assert err == "error: %s\n" % message

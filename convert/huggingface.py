"""Move GPT-Neo weights between our Mesh-TF checkpoints and HuggingFace's format, without torch: the work
of `gpt-neo-hf export|import`, whose usage (cli/huggingface.py) says what each writes.

Only numpy and TensorFlow's checkpoint reader/writer are used. The safetensors format (an 8-byte
header length, a JSON header, raw little-endian arrays) is read and written here one tensor at a
time, so a 2.7B model never sits in memory twice. pytorch_model.bin (a zip of a pickle and raw
storages) is read by an unpickler that rebuilds tensors as numpy arrays and refuses any other
Python object, so an untrusted file cannot run code.
"""
import collections
import contextlib
import fnmatch
import functools
import io
import json
import os
import pickle
import re
import shutil
import struct
import sys
import tempfile
import uuid
import zipfile

import numpy as np

from ..errors import ConfigError, UserError, first_line
from ..inputs.tokenizer import gpt2_bpe_files, load_tokenizer
from ..meshtf import tf
from ..storage import absolute, is_remote, read_json, write_atomically, write_json
from ..trainer.checkpoints import write_checkpoint
from ..trainer.config import Config, expand_attention_types, load_config

BFLOAT16 = tf.bfloat16.as_numpy_dtype
MASTER_DTYPES = {"float32": np.float32, "bfloat16": BFLOAT16}
HF_ARCHITECTURES = ("GPTNeoForCausalLM", "GPTNeoModel")
HF_KINDS = ("global", "local")
LAYER_NORM_EPSILON = 1e-5
# GPTNeoConfig's defaults (transformers 4.47), for keys a config.json leaves out.
HF_DEFAULTS = {
    "vocab_size": 50257, "max_position_embeddings": 2048, "hidden_size": 2048, "num_layers": 24,
    "attention_types": [[["global", "local"], 12]], "num_heads": 16, "window_size": 256,
    "activation_function": "gelu_new", "resid_dropout": 0.0, "embed_dropout": 0.0,
    "attention_dropout": 0.0, "layer_norm_epsilon": 1e-5, "intermediate_size": None,
    "tie_word_embeddings": True,
}
# HF tensors with no variable of ours: the tied output layer and, in files saved by transformers
# before 4.3x, each attention layer's constant mask buffers.
IGNORED_HF_TENSORS = re.compile(r"lm_head\.weight|transformer\.h\.\d+\.attn\.attention\.(bias|masked_bias)")
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": BFLOAT16,
                      "I64": np.int64, "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}
SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit
# The files of a tokenizer `inputs.tokenizer.load_tokenizer` reads from a directory; import copies them.
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/model, as the HuggingFace hub names models
# Storage classes of torch's pickles we rebuild: floats, and the uint8/bool mask buffers of old files.
TORCH_STORAGE_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "BFloat16Storage": BFLOAT16,
                        "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class ConversionError(UserError):
    """A checkpoint, HuggingFace directory or argument that cannot be converted, worded for the user."""


# ---------------------------------------------------------------------------------------------
# The variable table: our checkpoint names and shapes <-> HF tensor names


Variable = collections.namedtuple("Variable", "name shape hf_name transposed")


def variable_table(n_embd, n_layer, n_ctx, n_vocab):
    """Every model variable as (our name, our shape, HF tensor name, transposed in HF), in model order.

    Our kernels are [in, out] (y = x·W), torch's Linear weights [out, in]. For q/k/v the out index
    is head·head_size + feature in both (heads-major), and `o`'s in index likewise, so a plain
    transpose maps one layout to the other.
    """
    e, f = n_embd, 4 * n_embd
    table = [Variable("gpt2/wte", (n_vocab, e), "transformer.wte.weight", False),
             Variable("gpt2/wpe", (n_ctx, e), "transformer.wpe.weight", False)]
    for i in range(n_layer):
        ours, hf = "gpt2/h%d/" % i, "transformer.h.%d." % i
        table += [
            Variable(ours + "norm_1/g", (e,), hf + "ln_1.weight", False),
            Variable(ours + "norm_1/b", (e,), hf + "ln_1.bias", False),
            Variable(ours + "attn/q", (e, e), hf + "attn.attention.q_proj.weight", True),
            Variable(ours + "attn/k", (e, e), hf + "attn.attention.k_proj.weight", True),
            Variable(ours + "attn/v", (e, e), hf + "attn.attention.v_proj.weight", True),
            Variable(ours + "attn/o", (e, e), hf + "attn.attention.out_proj.weight", True),
            Variable(ours + "attn/compute_output_bias/o_b", (e,), hf + "attn.attention.out_proj.bias", False),
            Variable(ours + "norm_2/g", (e,), hf + "ln_2.weight", False),
            Variable(ours + "norm_2/b", (e,), hf + "ln_2.bias", False),
            Variable(ours + "mlp/conv1d_main/c_fc/kernel", (e, f), hf + "mlp.c_fc.weight", True),
            Variable(ours + "mlp/conv1d_main/c_fc/bias", (f,), hf + "mlp.c_fc.bias", False),
            Variable(ours + "mlp/conv1d_main/c_proj/kernel", (f, e), hf + "mlp.c_proj.weight", True),
            Variable(ours + "mlp/conv1d_main/c_proj/bias", (e,), hf + "mlp.c_proj.bias", False),
        ]
    table += [Variable("gpt2/ln_f/g", (e,), "transformer.ln_f.weight", False),
              Variable("gpt2/ln_f/b", (e,), "transformer.ln_f.bias", False)]
    return table


def hf_shape(variable, vocab_size):
    shape = variable.shape[::-1] if variable.transposed else variable.shape
    return (vocab_size,) + shape[1:] if variable.name == "gpt2/wte" else shape


def is_bookkeeping(name):
    """Checkpoint variables that are not model weights: the step counter and optimizer slots."""
    return name == "global_step" or "/adam_" in name or "_slot_" in name


def compress_attention_types(kinds):
    """("global", "local", "global", "local") -> [[["global", "local"], 2]] (shortest repeating pattern)."""
    kinds, n = list(kinds), len(kinds)
    for period in range(1, n + 1):
        if n % period == 0 and kinds[:period] * (n // period) == kinds:
            return [[kinds[:period], n // period]]


# ---------------------------------------------------------------------------------------------
# Export: our checkpoint -> HF directory


def export_hf(checkpoint, config, output_dir, vocab_size=None):
    """Write a HuggingFace directory from one of our checkpoints: `config.json`, `model.safetensors`,
    `generation_config.json` and, when the config names a tokenizer, its files (`tokenizer_files`).

    checkpoint: a checkpoint prefix (".../model.ckpt-1000") or a directory (its newest checkpoint).
    config: the model's `trainer.config.Config`, or a config name/path for `load_model_config`.
    vocab_size: rows of wte to keep (default n_vocab), e.g. 50257 of a vocab padded to 50304.
    Returns (the checkpoint prefix exported, the names of the files written).
    """
    if not isinstance(config, Config):
        config = load_model_config(config)
    m = config.model
    _check_exportable(m)
    vocab_size = m.n_vocab if vocab_size is None else vocab_size
    if not 1 <= vocab_size <= m.n_vocab:
        raise ConversionError("vocab_size %d is out of range: the model has n_vocab %d rows of wte"
                              % (vocab_size, m.n_vocab))
    prefix = resolve_checkpoint(checkpoint)
    reader = read_checkpoint(prefix)
    table = variable_table(m.n_embd, m.n_layer, m.n_ctx, m.n_vocab)
    _check_checkpoint(reader, prefix, table)
    special = special_ids(config.data, vocab_size)
    files = tokenizer_files(config, special)

    def tensors():
        for var in table:
            array = reader.get_tensor(var.name).astype(np.float32)  # bf16 masters widen exactly
            if var.name == "gpt2/wte":
                array = array[:vocab_size]
            yield np.ascontiguousarray(array.T if var.transposed else array)

    with staged_dir(output_dir, last=("config.json",)) as staging:
        write_safetensors(os.path.join(staging, "model.safetensors"),
                          [(v.hf_name, hf_shape(v, vocab_size)) for v in table], tensors(),
                          metadata={"format": "pt"})  # what save_pretrained writes, from_pretrained checks
        for name, content in files.items():
            (write_json if isinstance(content, dict) else write_atomically)(os.path.join(staging, name), content)
        write_json(os.path.join(staging, "generation_config.json"), generation_config(config, special))
        write_json(os.path.join(staging, "config.json"), hf_config(config, vocab_size))
    return prefix, sorted(["config.json", "generation_config.json", "model.safetensors", *files])


def load_model_config(name_or_path, overrides=None):
    """A model config as `load_config` reads it (with `overrides`, KEY=VALUE as main.py takes them), on
    one device: conversion builds no mesh, so the training `mesh_shape` and `layout` (a pod's, which this
    machine's devices or the config's sizes need not fit) are not checked."""
    return load_config(name_or_path, dict(overrides or {}, mesh_shape="all:1", layout=""))


def hf_config(config, vocab_size):
    """A complete GPTNeoConfig dict, with the keys `save_pretrained` writes (transformers 4.47)."""
    m = config.model
    return {
        "activation_function": "gelu_new",  # the tanh GELU our model (and mesh-tf) uses
        "architectures": ["GPTNeoForCausalLM"],
        "attention_dropout": m.attn_dropout,
        "attention_layers": list(m.attention_types),
        "attention_types": compress_attention_types(m.attention_types),
        "bos_token_id": config.data.eos_id,
        "classifier_dropout": 0.1,
        "embed_dropout": m.embed_dropout,
        "eos_token_id": config.data.eos_id,
        "hidden_size": m.n_embd,
        "initializer_range": 0.02,
        "intermediate_size": None,  # = 4 * hidden_size
        "layer_norm_epsilon": LAYER_NORM_EPSILON,
        "max_position_embeddings": m.n_ctx,
        "model_type": "gpt_neo",
        "num_heads": m.n_head,
        "num_layers": m.n_layer,
        "resid_dropout": m.res_dropout,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
        "window_size": m.local_attention_radius,  # HF's window: i - W < j <= i, our radius exactly
    }


SpecialIds = collections.namedtuple("SpecialIds", "eos pad")


def special_ids(data, vocab_size):
    """The dataset config's eos and padding ids as transformers' bos/eos and pad. The pad falls back to
    eos when the exported wte has no row for padding_id (the Pile configs' `<|padding|>` is 50257, past
    GPT-Neo's 50257 rows): generate feeds pads through the embedding, so such a pad would crash it."""
    if data.eos_id >= vocab_size:
        raise ConversionError("eos_id %d has no row in the exported wte of %d rows; export at least %d rows "
                              "(--vocab_size)" % (data.eos_id, vocab_size, data.eos_id + 1))
    return SpecialIds(data.eos_id, data.padding_id if data.padding_id < vocab_size else data.eos_id)


def generation_config(config, special):
    """generation_config.json: the config's sampling keys as `generate` reads them (docs/sampling-and-export.md
    has the table). temperature 0 (greedy) is do_sample false; top_k 0 and top_p 1 are off in both;
    predict_max_steps is max_new_tokens, and without it samples run up to n_ctx (max_length)."""
    p = config.predict
    generation = {"bos_token_id": special.eos, "eos_token_id": special.eos, "pad_token_id": special.pad}
    if p.temperature == 0:
        generation["do_sample"] = False  # sampling keys beside it would fail GenerationConfig.validate
    else:
        generation.update(do_sample=True, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p)
    if p.predict_max_steps is None:
        generation["max_length"] = config.model.n_ctx
    else:
        generation["max_new_tokens"] = p.predict_max_steps
    return generation


def tokenizer_files(config, special):
    """{file name: bytes, or a dict written as JSON}: the config's tokenizer (its first dataset config's, as
    training reads it) as transformers loads it offline; {} when the config has no dataset or its dataset
    no tokenizer.

    tokenizer.json is our tokenizer exactly (with `<|padding|>` for tokenizer_is_pretrained), so the fast
    tokenizer encodes as ours. GPT-2's BPE also gets its vocab.json + merges.txt, for the slow
    GPT2Tokenizer (whose defaults, no prefix space and unk `<|endoftext|>`, are our BPE's); another
    tokenizer loads as a PreTrainedTokenizerFast of its tokenizer.json.
    """
    datasets = config.data.dataset_configs
    if not datasets or not datasets[0].tokenizer_path:
        return {}
    path = datasets[0].tokenizer_path
    tokenizer = load_tokenizer(path, datasets[0].tokenizer_is_pretrained)
    eos, pad = (tokenizer.id_to_token(i) for i in special)
    if eos is None or pad is None:
        raise ConversionError("eos_id %d or padding_id %d is not a token of tokenizer %s; fix the dataset "
                              "config's ids" % (special.eos, special.pad, path))
    bpe_files = gpt2_bpe_files(path)
    tokens = {"bos_token": eos, "eos_token": eos, "pad_token": pad}
    settings = dict(tokens, **{
        "tokenizer_class": "GPT2Tokenizer" if bpe_files else "PreTrainedTokenizerFast",
        "model_max_length": config.model.n_ctx,
        "clean_up_tokenization_spaces": False,  # decode as ours does: keep the spaces before punctuation
        # The special tokens by id, which the slow tokenizer adds to vocab.json's (save_pretrained's form).
        "added_tokens_decoder": {str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                                          "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
                                 for i, t in sorted(tokenizer.get_added_tokens_decoder().items())},
    })
    return dict(bpe_files, **{"tokenizer_config.json": settings, "special_tokens_map.json": tokens,
                              "tokenizer.json": tokenizer.to_str().encode()})


def _check_exportable(m):
    if m.activation_fn != "gelu":
        raise ConversionError("activation_fn %r has no HuggingFace GPT-Neo equivalent (only gelu)" % m.activation_fn)
    kinds = sorted(set(m.attention_types) - set(HF_KINDS))
    if kinds:
        raise ConversionError("attention type(s) %s have no HuggingFace GPT-Neo equivalent (only global, local)"
                              % ", ".join(kinds))
    features = [key for key, on in (("rotary_emb", m.rotary_emb), ("axial_pos_emb", m.axial_pos_emb),
                                    ("num_mem_kv", m.num_mem_kv)) if on]
    if features:
        raise ConversionError("%s: no HuggingFace GPT-Neo equivalent (it has learned `wpe` positions and plain "
                              "attention only)" % ", ".join(features))
    block = [key for key in ("macaron", "mlp_glu", "scalenorm", "rezero", "share_parameters", "moe_layers")
             if getattr(m, key)]
    if block:
        raise ConversionError("%s: no HuggingFace GPT-Neo equivalent (its blocks are LayerNorm, attention and a "
                              "GELU MLP per layer)" % ", ".join(block))
    if m.no_weight_tie:
        raise ConversionError("no_weight_tie: no HuggingFace GPT-Neo equivalent (it always applies the final "
                              "LayerNorm ln_f and ties its output to wte; this model has neither)")


def recorded_config(checkpoint):
    """The config.json main.py records in a run's model_path, for a checkpoint directory or prefix there."""
    if not checkpoint:
        raise ConversionError("give --model (the checkpoint's config), or --checkpoint in a model_path that a "
                              "training run recorded its config.json in")
    directory = checkpoint if tf.io.gfile.isdir(checkpoint) else os.path.dirname(checkpoint)
    return directory.rstrip("/") + "/config.json"


def resolve_checkpoint(path):
    """A checkpoint prefix, from a prefix or a directory (its newest checkpoint)."""
    if tf.io.gfile.isdir(path):
        prefix = tf.train.latest_checkpoint(path)
        if not prefix:
            raise ConversionError("no checkpoint in %s (no `checkpoint` file naming one); give a prefix like "
                                  "%s/model.ckpt-1000" % (path, path.rstrip("/")))
        return prefix
    if not tf.io.gfile.exists(path + ".index"):
        raise ConversionError("checkpoint %s does not exist (no %s.index)" % (path, path))
    return path


def read_checkpoint(prefix):
    try:
        return tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise ConversionError("cannot read checkpoint %s: %s" % (prefix, first_line(e))) from None


def _check_checkpoint(reader, prefix, table):
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    for var in table:
        if var.name not in shapes:
            raise ConversionError("checkpoint %s lacks variable %s, which the config's model has; is it a "
                                  "checkpoint of another model?" % (prefix, var.name))
        if tuple(shapes[var.name]) != var.shape:
            raise ConversionError("variable %s has shape %s in checkpoint %s but the config implies %s"
                                  % (var.name, list(shapes[var.name]), prefix, list(var.shape)))
        if dtypes[var.name] not in (tf.float32, tf.bfloat16):
            raise ConversionError("variable %s in checkpoint %s is %s, not float32 or bfloat16"
                                  % (var.name, prefix, dtypes[var.name].name))
    known = {var.name for var in table}
    extra = sorted(n for n in shapes if n not in known and not is_bookkeeping(n))
    if extra:
        raise ConversionError("checkpoint %s holds %d variable(s) HuggingFace's GPT-Neo has no place for, "
                              "e.g. %s" % (prefix, len(extra), extra[0]))


# ---------------------------------------------------------------------------------------------
# Import: HF directory -> our checkpoint


def import_hf(hf_dir, output_dir, dtype="float32"):
    """Write `output_dir/model.ckpt-0` and `output_dir/config_from_hf.json` from a HuggingFace directory,
    with a copy of its tokenizer files (TOKENIZER_FILES) if it has them.

    hf_dir: a directory (local or gs://), or the hub id (owner/model) of one where no such directory
    exists, downloaded from the HuggingFace hub to a temporary directory (`hf_directory`).
    dtype: master dtype of the checkpoint, "float32" or "bfloat16" (the config's `precision`).
    Returns (the checkpoint prefix written, the names of the files written).
    """
    if dtype not in MASTER_DTYPES:
        raise ConversionError("dtype must be one of %s, got %r" % (", ".join(MASTER_DTYPES), dtype))
    if tf.io.gfile.exists(os.path.join(output_dir, "checkpoint")) or \
            tf.io.gfile.glob(os.path.join(output_dir, "model.ckpt-*")):
        raise ConversionError("%s already holds a checkpoint; import into a new directory" % output_dir)
    with hf_directory(hf_dir) as directory:
        return _import_directory(directory, output_dir, dtype)


def _import_directory(hf_dir, output_dir, dtype):
    model = model_fields_from_hf(read_json(os.path.join(hf_dir, "config.json"), "HuggingFace config"))
    tensors, source = read_hf_tensors(hf_dir)
    table = variable_table(model["n_embd"], model["n_layer"], model["n_ctx"], model["n_vocab"])
    _check_hf_tensors(tensors, source, table, model["n_vocab"])
    master = MASTER_DTYPES[dtype]

    def variables():
        for var in table:
            array = tensors[var.hf_name].load().astype(np.float32)  # f16/bf16 widen exactly
            array = np.ascontiguousarray(array.T if var.transposed else array)
            yield var.name, array.astype(master)  # round to nearest even for bfloat16

    model_path = absolute(output_dir)
    tokenizer_names = [name for name in TOKENIZER_FILES if tf.io.gfile.exists(os.path.join(hf_dir, name))]
    with staged_dir(output_dir, last=("checkpoint",)) as staging:
        prefix = write_checkpoint(os.path.join(staging, "model.ckpt"), variables(), global_step=0)
        write_json(os.path.join(staging, "config_from_hf.json"), our_config(model, model_path, dtype))
        for name in tokenizer_names:
            with tf.io.gfile.GFile(os.path.join(hf_dir, name), "rb") as f:
                write_atomically(os.path.join(staging, name), f.read())
    return os.path.join(output_dir, os.path.basename(prefix)), sorted(tokenizer_names + ["config_from_hf.json"])


@contextlib.contextmanager
def hf_directory(name):
    """Yield the directory `name`, or, when no such directory exists and `name` is a hub id (owner/model),
    a temporary one holding that model's config.json, weights and tokenizer files from the hub."""
    if is_remote(name) or tf.io.gfile.exists(name) or not HUB_ID.fullmatch(name):
        yield name
        return
    with tempfile.TemporaryDirectory(prefix="hf-download-") as directory:
        download_from_hub(name, directory)
        yield directory


def download_from_hub(repo_id, directory):
    """config.json, the weights (safetensors if the model has them, else pytorch_model.bin; whole or
    sharded) and the tokenizer files of the hub model `repo_id`, into `directory`."""
    # tokenizers' dependencies, imported only here: only a hub id needs the network.
    import huggingface_hub
    import requests
    from huggingface_hub.errors import OfflineModeIsEnabled
    try:
        names = huggingface_hub.list_repo_files(repo_id)
        safetensors = any(fnmatch.fnmatch(n, "model*.safetensors*") for n in names)
        weights = "model*.safetensors*" if safetensors else "pytorch_model*.bin*"
        huggingface_hub.snapshot_download(repo_id, local_dir=directory,
                                          allow_patterns=["config.json", weights, *TOKENIZER_FILES])
    except (OSError, ValueError) as e:
        if isinstance(e, OfflineModeIsEnabled):
            reason = "HF_HUB_OFFLINE is set"
        elif isinstance(e, requests.ConnectionError):
            reason = "the hub cannot be reached from this machine"
        else:
            reason = "%s: %s" % (type(e).__name__, first_line(e))
        raise ConversionError("%s is not a directory here, and downloading it from the HuggingFace hub failed (%s); "
                              "download it where the hub is reachable (huggingface-cli download %s --local-dir DIR) "
                              "and give that directory" % (repo_id, reason, repo_id)) from None


def model_fields_from_hf(hf):
    """Our model config keys from a GPTNeoConfig dict; raises for what our model cannot represent."""
    if hf.get("model_type") != "gpt_neo":
        raise ConversionError("config.json is not a GPT-Neo model: model_type %r, expected \"gpt_neo\""
                              % hf.get("model_type"))
    architectures = hf.get("architectures") or ["GPTNeoForCausalLM"]
    unsupported = [a for a in architectures if a not in HF_ARCHITECTURES]
    if unsupported:
        raise ConversionError("architecture %s is not supported; import %s" % (
            ", ".join(unsupported), " or ".join(HF_ARCHITECTURES)))

    def get(key, kind):
        """config.json's value of `key` (GPTNeoConfig's default if absent), checked to be `kind`."""
        value = hf.get(key, HF_DEFAULTS[key])
        if kind == "number":
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            raise ConversionError("config.json key %s is %s, expected %s" % (
                key, json.dumps(value), kind if isinstance(kind, str) else kind.__name__))
        return value

    activation = get("activation_function", str)
    if activation != "gelu_new":
        raise ConversionError("activation_function %r is not supported: GPT-Neo here uses the tanh GELU "
                              "(HuggingFace \"gelu_new\")" % activation)
    n_embd, n_head, n_layer = get("hidden_size", int), get("num_heads", int), get("num_layers", int)
    if n_embd % n_head:
        raise ConversionError("hidden_size %d is not divisible by num_heads %d" % (n_embd, n_head))
    if hf.get("intermediate_size") not in (None, 4 * n_embd):
        raise ConversionError("intermediate_size %r is not supported: GPT-Neo's MLP is 4 * hidden_size = %d"
                              % (hf["intermediate_size"], 4 * n_embd))
    if abs(get("layer_norm_epsilon", "number") - LAYER_NORM_EPSILON) > 1e-12:
        raise ConversionError("layer_norm_epsilon %g is not supported: GPT-Neo's is 1e-5"
                              % hf.get("layer_norm_epsilon"))
    if not get("tie_word_embeddings", bool):
        raise ConversionError("tie_word_embeddings false is not supported: GPT-Neo's output layer is wte")
    compressed = hf.get("attention_types") or compress_attention_types(hf.get("attention_layers") or [])
    try:
        kinds = expand_attention_types(compressed or HF_DEFAULTS["attention_types"])
    except ConfigError as e:
        raise ConversionError("config.json: %s" % e) from None
    if set(kinds) - set(HF_KINDS):
        raise ConversionError("attention type(s) %s are not supported (only global, local)"
                              % ", ".join(sorted(set(kinds) - set(HF_KINDS))))
    if len(kinds) != n_layer:
        raise ConversionError("attention_types expand to %d layers but num_layers is %d" % (len(kinds), n_layer))
    return {
        "n_vocab": get("vocab_size", int),
        "n_ctx": get("max_position_embeddings", int),
        "n_embd": n_embd,
        "n_head": n_head,
        "n_layer": n_layer,
        "attention_types": compress_attention_types(kinds),
        "local_attention_radius": get("window_size", int),
        "embed_dropout": get("embed_dropout", "number"),
        "attn_dropout": get("attention_dropout", "number"),
        "res_dropout": get("resid_dropout", "number"),
    }


def our_config(model, model_path, dtype):
    """A model config of ours (the original's keys) for the imported weights.

    The training keys are placeholders to complete: datasets, batch size, steps, lr, mesh, layout.
    """
    return dict(model, **{
        "activation_fn": "gelu",
        "precision": dtype,
        "mesh_shape": "x:1",
        "layout": "",
        "model_path": model_path,
        "train_batch_size": 8,
        "train_steps": 1000,
        "lr": 1e-4,
        "warmup_steps": 0,
        "opt_name": "adam",
        "iterations": 100,
        "datasets": [["pile", None, None, None]],
    })


def read_hf_tensors(hf_dir):
    """({HF tensor name: LazyTensor}, source path) from model.safetensors or pytorch_model.bin (or shards)."""
    for name, reader in (("model.safetensors", read_safetensors), ("pytorch_model.bin", read_pytorch_bin)):
        path = os.path.join(hf_dir, name)
        if tf.io.gfile.exists(path):
            return _with_prefix(reader(path)), path
        index = path + ".index.json"
        if tf.io.gfile.exists(index):
            weight_map = read_json(index, "shard index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise ConversionError("%s has no `weight_map` object" % index)
            tensors = {}
            for shard in sorted(set(weight_map.values())):
                tensors.update(reader(os.path.join(hf_dir, shard)))
            return _with_prefix(tensors), index
    if not tf.io.gfile.isdir(hf_dir):
        raise ConversionError("HuggingFace directory %s does not exist" % hf_dir)
    raise ConversionError("%s has no model.safetensors or pytorch_model.bin (nor a sharded *.index.json)" % hf_dir)


def _with_prefix(tensors):
    """GPTNeoModel saves names without GPTNeoForCausalLM's `transformer.` prefix."""
    return {n if n.startswith(("transformer.", "lm_head.")) else "transformer." + n: t for n, t in tensors.items()}


def _check_hf_tensors(tensors, source, table, vocab_size):
    for var in table:
        if var.hf_name not in tensors:
            raise ConversionError("%s lacks tensor %s" % (source, var.hf_name))
        tensor, expected = tensors[var.hf_name], hf_shape(var, vocab_size)
        if tensor.shape != expected:
            raise ConversionError("tensor %s has shape %s in %s but config.json implies %s"
                                  % (var.hf_name, list(tensor.shape), source, list(expected)))
        if tensor.dtype not in (np.dtype(np.float32), np.dtype(np.float16), np.dtype(BFLOAT16), np.dtype(np.float64)):
            raise ConversionError("tensor %s in %s is %s, not a float" % (var.hf_name, source, tensor.dtype))
    known = {var.hf_name for var in table}
    extra = sorted(n for n in tensors if n not in known and not IGNORED_HF_TENSORS.fullmatch(n))
    if extra:
        raise ConversionError("%s holds %d tensor(s) GPT-Neo has no place for, e.g. %s"
                              % (source, len(extra), extra[0]))


# ---------------------------------------------------------------------------------------------
# safetensors, read and written one tensor at a time


class LazyTensor:
    """A tensor's shape and dtype, its data read by `load()`."""

    def __init__(self, shape, dtype, load):
        self.shape, self.dtype, self.load = tuple(shape), np.dtype(dtype), load


def write_safetensors(path, names_and_shapes, arrays, metadata):
    """Write float32 `arrays` (an iterable, in the order of `names_and_shapes`) as a safetensors file."""
    header, offset = {"__metadata__": metadata}, 0
    for name, shape in names_and_shapes:
        size = 4 * int(np.prod(shape, dtype=np.int64))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the library pads the header so data starts 8-byte aligned
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for (name, shape), array in zip(names_and_shapes, arrays):
            if array.shape != tuple(shape) or array.dtype != np.float32:
                raise AssertionError("%s: %s %s, header says float32 %s" % (name, array.dtype, array.shape, shape))
            f.write(array.astype("<f4", copy=False).tobytes())


def read_safetensors(path):
    """{name: LazyTensor} of a safetensors file; only the header is read here."""
    with tf.io.gfile.GFile(path, "rb") as f:
        start = f.read(8)
        size = struct.unpack("<Q", start)[0] if len(start) == 8 else -1
        if not 2 <= size <= SAFETENSORS_MAX_HEADER:
            raise ConversionError("%s is not a safetensors file (bad header length)" % path)
        try:
            header = json.loads(f.read(size))
        except ValueError:
            raise ConversionError("%s is not a safetensors file (header is not JSON)" % path) from None
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise ConversionError("tensor %s in %s has dtype %s, which is not supported"
                                  % (name, path, info.get("dtype")))
        shape, (begin, end) = tuple(info["shape"]), info["data_offsets"]
        if end - begin != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise ConversionError("tensor %s in %s: data_offsets do not match its shape %s" % (name, path, list(shape)))
        tensors[name] = LazyTensor(shape, dtype, functools.partial(_read_safetensor, path, 8 + size + begin,
                                                                    end - begin, dtype, shape))
    return tensors


def _read_safetensor(path, offset, length, dtype, shape):
    with tf.io.gfile.GFile(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise ConversionError("%s is truncated" % path)
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


# ---------------------------------------------------------------------------------------------
# pytorch_model.bin without torch


def read_pytorch_bin(path):
    """{name: LazyTensor} of a state dict written by `torch.save` (zip format, torch >= 1.6)."""
    with _open_zip(path) as archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ConversionError("%s is not a torch.save file (no single data.pkl)" % path)
        root = pickles[0][:-len("data.pkl")]
        if root + "byteorder" in archive.namelist() and archive.read(root + "byteorder") != b"little":
            raise ConversionError("%s was saved big-endian; re-save it on a little-endian machine" % path)
        unpickler = _TensorUnpickler(io.BytesIO(archive.read(pickles[0])), path, root)
        try:
            state = unpickler.load()
        except (pickle.UnpicklingError, EOFError, AttributeError, IndexError, KeyError, TypeError,
                ValueError) as e:
            if isinstance(e, ConversionError):
                raise
            raise ConversionError("%s: cannot read its pickle: %s" % (path, first_line(e))) from None
    if not isinstance(state, dict) or not all(isinstance(t, LazyTensor) for t in state.values()):
        raise ConversionError("%s does not hold a state dict (a mapping of names to tensors)" % path)
    return dict(state)


@contextlib.contextmanager
def _open_zip(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        if not zipfile.is_zipfile(f):
            raise ConversionError("%s is not in torch's zip format (saved by torch < 1.6?); re-save it with a "
                                  "newer torch or convert it to safetensors" % path)
        with zipfile.ZipFile(f) as archive:
            yield archive


class _StorageType:
    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(TORCH_STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, dtype, numel, path, member):
        self.dtype, self.numel, self.path, self.member = dtype, numel, path, member

    def read(self):
        with _open_zip(self.path) as archive:
            data = archive.read(self.member)
        array = np.frombuffer(data, dtype=self.dtype.newbyteorder("<"))
        if array.size != self.numel:
            raise ConversionError("%s: storage %s holds %d elements, the pickle says %d"
                                  % (self.path, self.member, array.size, self.numel))
        return array


class _TensorUnpickler(pickle.Unpickler):
    """Rebuilds torch tensors as LazyTensors; any object but dicts, tensors and storages is refused."""

    def __init__(self, file, path, root):
        super().__init__(file)
        self.path, self.root = path, root

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in TORCH_STORAGE_DTYPES:
            return _StorageType(name)
        raise ConversionError("%s refers to %s.%s; only float32/float16/bfloat16 tensors are read from "
                              "pytorch_model.bin" % (self.path, module, name))

    def persistent_load(self, pid):
        ok = (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
              and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int))
        if not ok:
            raise ConversionError("%s: unsupported persistent object %r" % (self.path, repr(pid)[:80]))
        _, storage_type, key, _location, numel = pid
        return _Storage(storage_type.dtype, numel, self.path, self.root + "data/" + key)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2: a view of `size` with element `stride`s into the storage."""
    ints = all(isinstance(v, int) for v in (storage_offset, *size, *stride))
    if not isinstance(storage, _Storage) or not ints or len(size) != len(stride):
        raise ConversionError("malformed tensor in pytorch_model.bin")
    return LazyTensor(size, storage.dtype, functools.partial(_strided, storage, storage_offset, tuple(size),
                                                             tuple(stride)))


def _rebuild_parameter(data, requires_grad, backward_hooks):
    return data


def _strided(storage, offset, size, stride):
    flat = storage.read()
    if 0 in size:
        return np.zeros(size, flat.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if offset < 0 or min(stride, default=0) < 0 or last >= flat.size:
        raise ConversionError("%s: a tensor reaches outside its storage %s" % (storage.path, storage.member))
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                           strides=[s * flat.itemsize for s in stride], writeable=False)
    return np.array(view)


# ---------------------------------------------------------------------------------------------
# An output directory that appears whole


@contextlib.contextmanager
def staged_dir(output_dir, last=()):
    """Yield a directory to write into; on success its files appear in `output_dir` all at once.

    Locally the files are written to a temporary sibling directory, which is renamed to
    `output_dir` (or, if that exists, whose files are moved in one by one with `last` last).
    Object stores (gs://) have no rename: files are written in place, `last` is written last by
    the caller, and each object appears whole when it is closed.
    """
    if is_remote(output_dir):
        tf.io.gfile.makedirs(output_dir)
        yield output_dir
        return
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    # mkdir, not tempfile.mkdtemp: the staging directory becomes `output_dir`, so it gets mkdir's mode
    # (0777 less the umask), not mkdtemp's 0700.
    staging = os.path.join(parent, ".%s.tmp-%s" % (os.path.basename(output_dir), uuid.uuid4().hex))
    os.mkdir(staging)
    try:
        yield staging
        if not os.path.exists(output_dir):
            os.rename(staging, output_dir)
            return
        names = sorted(os.listdir(staging), key=lambda n: (n in last, n))
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Command line


def main(args):
    """Run the parsed command line (cli/huggingface.py); the exit status."""
    try:
        if args.command == "export":
            config = load_model_config(args.model or recorded_config(args.checkpoint), args.overrides)
            prefix, names = export_hf(args.checkpoint or config.model_path, config, args.output_dir, args.vocab_size)
            print("exported %s to %s (%s)" % (prefix, args.output_dir, ", ".join(names)))
            if "tokenizer.json" not in names:
                print("note: no tokenizer files in %s: the config has no dataset, or its dataset config no "
                      "tokenizer_path; give transformers a tokenizer yourself (tokenizer=...)" % args.output_dir)
        else:
            prefix, names = import_hf(args.hf_dir, args.output_dir, args.dtype)
            print("imported %s to %s (%s masters; %s); complete %s before training"
                  % (args.hf_dir, prefix, args.dtype, ", ".join(names),
                     os.path.join(args.output_dir, "config_from_hf.json")))
    except UserError as e:
        print("error: %s" % first_line(e), file=sys.stderr)
        return 2
    return 0

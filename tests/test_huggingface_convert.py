"""HuggingFace export/import (convert/huggingface.py) on real checkpoints, read back by transformers itself.

torch and transformers appear only here, as the independent reader/writer of the other side; the
converter itself must run without them (checked by running the CLI with torch made unimportable).
The export's tokenizer and generation config are read by transformers' AutoTokenizer and
pipeline("text-generation"), and the export is scored by lm-evaluation-harness, offline.
"""
import glob
import json
import os
import pickle
import stat
import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest
import torch
from conftest import REPO, SAMPLE, TINY, checkpoint_logits, run_main
from gcs_emulator import small_receive_buffers
from safetensors.numpy import load_file
from transformers import AutoTokenizer, GenerationConfig, GPTNeoConfig, GPTNeoForCausalLM, pipeline

from gpt_neo_mtf.cli import huggingface as hf_command
from gpt_neo_mtf.cli import train_tokenizer as train_tokenizer_command
from gpt_neo_mtf.convert import huggingface as hf
from gpt_neo_mtf.inputs.tokenizer import load_tokenizer, tokenizer_for
from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.tfrecords_tools import train_tokenizer
from gpt_neo_mtf.tfrecords_tools.create_tfrecords import create_tfrecords
from gpt_neo_mtf.trainer.config import ConfigError, load_config

# What export writes for a config whose dataset reads the GPT-2 tokenizer.
GPT2_EXPORT = ["config.json", "generation_config.json", "merges.txt", "model.safetensors", "special_tokens_map.json",
               "tokenizer.json", "tokenizer_config.json", "vocab.json"]
TINY_HF = dict(n_vocab=50257, n_ctx=64, local_attention_radius=16, attention_types=[[["global", "local"], 1]],
               n_embd=32, n_head=4, n_layer=2)


def checkpoint_variables(prefix):
    """{name: (dtype name, shape, numpy array)} of every variable in a checkpoint."""
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    return {name: (dtypes[name].name, tuple(shape), reader.get_tensor(name))
            for name, shape in reader.get_variable_to_shape_map().items()}


def spec_table(n_embd=32, n_layer=2, n_ctx=64, n_vocab=50257, dtype="float32"):
    """The spec's variable table (GPT-NEO-REFERENCE.md 4.2), written out independently of the converter."""
    D, F = n_embd, 4 * n_embd
    table = {"gpt2/wte": (n_vocab, D), "gpt2/wpe": (n_ctx, D), "gpt2/ln_f/g": (D,), "gpt2/ln_f/b": (D,)}
    for i in range(n_layer):
        for name in ("norm_1/g", "norm_1/b", "norm_2/g", "norm_2/b", "attn/compute_output_bias/o_b",
                     "mlp/conv1d_main/c_proj/bias"):
            table["gpt2/h%d/%s" % (i, name)] = (D,)
        for name in "qkvo":
            table["gpt2/h%d/attn/%s" % (i, name)] = (D, D)
        table["gpt2/h%d/mlp/conv1d_main/c_fc/kernel" % i] = (D, F)
        table["gpt2/h%d/mlp/conv1d_main/c_fc/bias" % i] = (F,)
        table["gpt2/h%d/mlp/conv1d_main/c_proj/kernel" % i] = (F, D)
    found = {name: (dtype, shape) for name, shape in table.items()}
    found["global_step"] = ("int64", ())
    return found


def hf_load(directory):
    model, info = GPTNeoForCausalLM.from_pretrained(directory, attn_implementation="eager",
                                                    torch_dtype=torch.float32, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, info
    return model.eval()


def random_checkpoint(prefix, dtype=np.float32, skip=(), slots=True, **model):
    """A checkpoint of random weights shaped by the converter's table, with Adam slots as training writes."""
    sizes = dict(n_embd=32, n_layer=2, n_ctx=64, n_vocab=50257)
    sizes.update(model)
    rng = np.random.RandomState(1)
    arrays = []
    for var in hf.variable_table(**sizes):
        if var.name not in skip:
            arrays.append((var.name, rng.normal(size=var.shape).astype(np.float32).astype(dtype)))
            if slots:
                arrays += [(var.name + "/adam_m", np.zeros(var.shape, np.float32)),
                           (var.name + "/adam_v", np.zeros(var.shape, np.float32))]
    return hf.write_checkpoint(prefix, arrays, global_step=7)


def test_export_matches_ours_in_transformers_and_imports_back_bit_for_bit(make_config, tmp_path):
    path = make_config("trained", train_steps=3, iterations=3, **TINY_HF)
    assert run_main("--model", path) == 0
    config = load_config(path)
    checkpoint = tf.train.latest_checkpoint(config.model_path)

    exported = str(tmp_path / "hf")
    assert hf.export_hf(config.model_path, config, exported) == (checkpoint, sorted(os.listdir(exported)))
    assert sorted(os.listdir(exported)) == GPT2_EXPORT
    model = hf_load(exported)
    # The key set and metadata transformers' own save_pretrained writes for this model.
    model.save_pretrained(str(tmp_path / "resaved"))
    theirs = load_file(str(tmp_path / "resaved" / "model.safetensors"))
    ours = load_file(os.path.join(exported, "model.safetensors"))
    assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    with open(os.path.join(exported, "model.safetensors"), "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    assert header["__metadata__"] == {"format": "pt"}
    saved_config = json.load(open(tmp_path / "resaved" / "config.json"))
    exported_config = json.load(open(os.path.join(exported, "config.json")))
    assert set(saved_config) - set(exported_config) == {"transformers_version", "_name_or_path"}  # provenance
    assert {k: saved_config[k] for k in exported_config} == exported_config
    assert exported_config["window_size"] == 16 and exported_config["vocab_size"] == 50257
    assert exported_config["attention_types"] == [[["global", "local"], 1]]

    ids = np.random.RandomState(0).randint(0, 50257, size=(3, 64))
    with torch.no_grad():
        hf_logits = model(torch.as_tensor(ids)).logits.numpy()
    assert np.abs(hf_logits - checkpoint_logits(config, checkpoint, ids)).max() <= 1e-4

    original = checkpoint_variables(checkpoint)
    for dtype in ("float32", "bfloat16"):
        out = str(tmp_path / ("imported_" + dtype))
        prefix, names = hf.import_hf(exported, out, dtype)
        assert prefix == os.path.join(out, "model.ckpt-0") and tf.train.latest_checkpoint(out) == prefix
        assert names == ["config_from_hf.json", "merges.txt", "tokenizer.json", "vocab.json"]
        for name in names[1:]:  # the tokenizer, copied as it was exported
            assert open(os.path.join(out, name), "rb").read() == open(os.path.join(exported, name), "rb").read()
        imported = checkpoint_variables(prefix)
        assert {n: v[:2] for n, v in imported.items()} == spec_table(dtype=dtype)
        assert imported.pop("global_step")[2] == 0
        for name, (_, _, value) in imported.items():
            expected = original[name][2].astype(hf.MASTER_DTYPES[dtype])
            assert value.tobytes() == expected.tobytes(), name
        written = json.load(open(os.path.join(out, "config_from_hf.json")))
        assert written["precision"] == dtype and written["model_path"] == out

    # The fp32 import's config loads as is, and describes the trained model.
    imported_config = load_config(os.path.join(str(tmp_path / "imported_float32"), "config_from_hf.json"))
    assert imported_config.model.attention_types == config.model.attention_types
    for key in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer", "local_attention_radius", "res_dropout"):
        assert getattr(imported_config.model, key) == getattr(config.model, key), key

    # Fine-tuning from the import: the weights are restored, Adam's moments start at zero.
    imported_dir = str(tmp_path / "imported_float32")
    finetune = make_config("finetune", train_steps=3, iterations=3, model_path=imported_dir, **TINY_HF)
    assert run_main("--model", finetune) == 0
    tuned = checkpoint_variables(tf.train.latest_checkpoint(imported_dir))
    assert tuned["global_step"][2] == 3 and "gpt2/wte/adam_m" in tuned
    # Three Adam steps of lr <= 0.002 move each weight by little: training went on from the import.
    assert np.abs(tuned["gpt2/wte"][2] - original["gpt2/wte"][2]).max() < 0.01

    # bfloat16 masters into the float32 model: read as stored and cast (eval and sampling alike).
    def eval_loss(name, model_path):
        config_path = make_config(name, eval_steps=2, model_path=model_path, **TINY_HF)
        assert run_main("--model", config_path, "--eval") == 0
        return [json.loads(line) for line in open(os.path.join(model_path, "eval_results.jsonl"))][-1]["loss"]

    bf16_dir = str(tmp_path / "imported_bfloat16")
    assert abs(eval_loss("bf16", bf16_dir) - eval_loss("fp32", config.model_path)) < 0.05
    assert run_main("--model", make_config("bf16_sample", model_path=bf16_dir, **TINY_HF), "--predict",
                    "--max_new_tokens", "3") == 0


def tiny_hf_model(vocab_size=1000):
    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=vocab_size, hidden_size=32, num_layers=2, num_heads=4, window_size=16,
                          attention_types=[[["global", "local"], 1]], max_position_embeddings=64)
    return GPTNeoForCausalLM(config).eval()


def test_import_of_pytorch_bin_equals_import_of_safetensors(tmp_path):
    """Files written by torch/transformers themselves, in float32 and bfloat16."""
    model = tiny_hf_model()
    params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    imports = {}
    for dtype in ("float32", "bfloat16"):
        model = model.to(getattr(torch, dtype))
        safetensors_dir, bin_dir = tmp_path / ("st_" + dtype), tmp_path / ("bin_" + dtype)
        model.save_pretrained(str(safetensors_dir))
        bin_dir.mkdir()
        (bin_dir / "config.json").write_text((safetensors_dir / "config.json").read_text())
        state = model.state_dict()  # includes the tied lm_head
        for i in range(2):  # the constant mask buffers files saved by transformers < 4.3x hold
            state["transformer.h.%d.attn.attention.bias" % i] = torch.tril(torch.ones(1, 1, 64, 64, dtype=torch.uint8))
            state["transformer.h.%d.attn.attention.masked_bias" % i] = torch.tensor(-1e9)
        torch.save(state, str(bin_dir / "pytorch_model.bin"))
        for source in (safetensors_dir, bin_dir):
            prefix, _ = hf.import_hf(str(source), str(tmp_path / ("ckpt_" + source.name)), dtype)
            imports[source.name] = checkpoint_variables(prefix)
        assert imports["st_" + dtype].keys() == imports["bin_" + dtype].keys()
        for name, (kind, shape, value) in imports["st_" + dtype].items():
            assert kind == (dtype if name != "global_step" else "int64")
            assert imports["bin_" + dtype][name][2].tobytes() == value.tobytes(), name

    # The values are HF's parameters, transposed where the spec says, and bf16 is torch's rounding.
    fp32 = imports["st_float32"]
    np.testing.assert_array_equal(fp32["gpt2/h1/attn/q"][2], params["transformer.h.1.attn.attention.q_proj.weight"].T)
    np.testing.assert_array_equal(fp32["gpt2/h0/mlp/conv1d_main/c_proj/kernel"][2],
                                  params["transformer.h.0.mlp.c_proj.weight"].T)
    np.testing.assert_array_equal(fp32["gpt2/wte"][2], params["transformer.wte.weight"])
    for name, (_, _, value) in imports["st_bfloat16"].items():
        rounded = fp32[name][2].astype(hf.BFLOAT16) if name != "global_step" else fp32[name][2]
        assert value.tobytes() == rounded.tobytes(), name


def test_pytorch_bin_views_and_refused_objects(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    tensors = {"view": base[1:].t()[2:5], "half": base.half()[2], "bf16": base.bfloat16().t(),
               "mask": torch.tril(torch.ones(3, 3, dtype=torch.bool))}
    torch.save(tensors, str(tmp_path / "views.bin"))
    read = hf.read_pytorch_bin(str(tmp_path / "views.bin"))
    for name, tensor in tensors.items():
        expected = tensor.float().numpy() if name == "bf16" else tensor.numpy()
        np.testing.assert_array_equal(read[name].load().astype(expected.dtype), expected)
        assert read[name].shape == tuple(tensor.shape)

    # A pickle that would run a shell command is refused before anything runs.
    class Exploit:
        def __reduce__(self):
            return os.system, ("touch %s" % (tmp_path / "pwned"),)

    bad = tmp_path / "bad" / "pytorch_model.bin"
    bad.parent.mkdir()
    with zipfile.ZipFile(str(bad), "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"transformer.wte.weight": Exploit()}, protocol=2))
    with pytest.raises(hf.ConversionError, match=r"refers to posix\.system; only float32"):
        hf.read_pytorch_bin(str(bad))
    assert not (tmp_path / "pwned").exists()


def test_padded_vocab_export_cuts_wte_rows_and_reads_bfloat16_masters(make_config, tmp_path):
    config = load_config(make_config("padded", **dict(TINY_HF, n_vocab=50304)))
    checkpoint = random_checkpoint(str(tmp_path / "ckpt" / "model.ckpt"), dtype=hf.BFLOAT16, n_vocab=50304)
    exported = str(tmp_path / "hf")
    hf.export_hf(checkpoint, config, exported, vocab_size=50257)
    tensors = load_file(os.path.join(exported, "model.safetensors"))
    wte = tf.train.load_checkpoint(checkpoint).get_tensor("gpt2/wte")
    assert wte.dtype == hf.BFLOAT16 and wte.shape == (50304, 32)
    assert tensors["transformer.wte.weight"].dtype == np.float32
    np.testing.assert_array_equal(tensors["transformer.wte.weight"], wte[:50257].astype(np.float32))
    assert json.load(open(os.path.join(exported, "config.json")))["vocab_size"] == 50257
    assert hf_load(exported).transformer.wte.weight.shape == (50257, 32)

    hf.export_hf(checkpoint, config, exported)  # into the existing directory: the full padded table
    assert load_file(os.path.join(exported, "model.safetensors"))["transformer.wte.weight"].shape == (50304, 32)
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "dataset_configs", "hf", "padded.json"]  # no staging left


def cli_error(capsys, *argv):
    assert hf_command.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_cli_errors(make_config, tmp_path, capsys):
    config_path = make_config("cli", **TINY_HF)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no checkpoint in %s" % empty in cli_error(capsys, "export", "--model", config_path,
                                                       "--model_path", str(empty), "--output_dir", "x")
    assert "does not exist" in cli_error(capsys, "export", "--model", str(tmp_path / "nope.json"), "--output_dir", "x")
    lacking = random_checkpoint(str(tmp_path / "lacking" / "model.ckpt"), skip=("gpt2/ln_f/b",))
    assert "lacks variable gpt2/ln_f/b" in cli_error(capsys, "export", "--model", config_path,
                                                     "--model_path", lacking, "--output_dir", "x")
    short = random_checkpoint(str(tmp_path / "short" / "model.ckpt"), n_ctx=32)
    assert "variable gpt2/wpe has shape [32, 32] in checkpoint" in cli_error(
        capsys, "export", "--model", config_path, "--model_path", short, "--output_dir", "x")
    good = random_checkpoint(str(tmp_path / "good" / "model.ckpt"))
    assert "vocab_size 60000 is out of range" in cli_error(
        capsys, "export", "--model", config_path, "--model_path", good, "--output_dir", "x", "--vocab_size", "60000")
    assert "eos_id 50256 has no row in the exported wte of 50000 rows; export at least 50257 rows" in cli_error(
        capsys, "export", "--model", config_path, "--model_path", good, "--output_dir", "x", "--vocab_size", "50000")
    padded = random_checkpoint(str(tmp_path / "padded" / "model.ckpt"), n_vocab=50304)
    dataset_config = tmp_path / "dataset_configs" / "sample.json"
    dataset_config.write_text(json.dumps(dict(json.loads(dataset_config.read_text()), padding_id=50300)))
    assert "eos_id 50256 or padding_id 50300 is not a token of tokenizer gpt2" in cli_error(
        capsys, "export", "--model", config_path, "--model_path", padded, "--output_dir", "x", "n_vocab=50304")
    dataset_config.write_text(json.dumps(dict(json.loads(dataset_config.read_text()), padding_id=50256)))
    assert not os.path.exists("x")

    exported = tmp_path / "hf"
    assert hf_command.main(["export", "--model", config_path, "--model_path", good, "--output_dir", str(exported)]) == 0
    capsys.readouterr()
    hf_config = json.loads((exported / "config.json").read_text())

    def hf_dir(name, files=("config.json", "model.safetensors"), **changes):
        directory = tmp_path / name
        directory.mkdir()
        for file in files:
            os.link(str(exported / file), str(directory / file))
        if changes:
            os.unlink(str(directory / "config.json"))
            (directory / "config.json").write_text(json.dumps(dict(hf_config, **changes)))
        return str(directory)

    def import_error(directory, *more):
        return cli_error(capsys, "import", "--hf_dir", directory, "--output_dir", str(tmp_path / "out"), *more)

    assert "HuggingFace config %s does not exist" % os.path.join(hf_dir("no_config", files=()), "config.json") \
        in import_error(str(tmp_path / "no_config"))
    assert "has no model.safetensors or pytorch_model.bin" in import_error(hf_dir("no_weights", files=("config.json",)))
    assert "not a GPT-Neo model: model_type 'gpt2'" in import_error(hf_dir("gpt2", model_type="gpt2"))
    assert "architecture GPTNeoForSequenceClassification is not supported" in import_error(
        hf_dir("classifier", architectures=["GPTNeoForSequenceClassification"]))
    assert "activation_function 'gelu' is not supported" in import_error(hf_dir("erf", activation_function="gelu"))
    assert "tensor transformer.wte.weight has shape [50257, 32] in" in import_error(hf_dir("wider", hidden_size=64))
    assert "attention_types expand to 2 layers but num_layers is 3" in import_error(hf_dir("deeper", num_layers=3))
    assert hf_command.main(["import", "--hf_dir", str(exported), "--output_dir", str(tmp_path / "out")]) == 0
    assert "already holds a checkpoint" in import_error(str(exported))
    with pytest.raises(SystemExit) as exit_:
        hf_command.main(["import", "--hf_dir", str(exported), "--output_dir", "y", "--dtype", "float16"])
    assert exit_.value.code == 2


def test_export_runs_on_any_machine_whatever_the_training_mesh(tmp_path, capsys):
    """A released config (mesh x:4,y:2) shrunk in its size keys, which its mesh no longer fits (batch 2
    over x:4): training would refuse it, the export, which builds no mesh, converts its checkpoint."""
    raw = json.load(open(os.path.join(REPO, "configs", "gpt_neo_125M.json")))
    raw.update(n_embd=32, n_head=4, n_layer=2, n_ctx=64, attention_types=[[["global", "local"], 1]],
               train_batch_size=2, model_path=str(tmp_path / "model"))
    config_path = tmp_path / "neo_small.json"
    config_path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="mesh dimension 'x'"):
        load_config(str(config_path))
    checkpoint = random_checkpoint(str(tmp_path / "model" / "model.ckpt"))

    assert hf_command.main(["export", "--model", str(config_path), "--output_dir", str(tmp_path / "hf")]) == 0
    assert "exported %s" % checkpoint in capsys.readouterr().out
    exported = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (exported["hidden_size"], exported["num_layers"], exported["window_size"]) == (32, 2, 256)
    tensors = load_file(str(tmp_path / "hf" / "model.safetensors"))
    stored = checkpoint_variables(checkpoint)
    kernel = stored["gpt2/h1/mlp/conv1d_main/c_fc/kernel"][2]
    assert np.array_equal(tensors["transformer.h.1.mlp.c_fc.weight"], kernel.T)


def test_output_directories_get_mkdirs_mode(make_config, tmp_path):
    """0777 less the umask, as mkdir gives (they are renamed from a staging directory, which must not
    keep tempfile's 0700); their files 0666 less the umask."""
    config = load_config(make_config("modes", **TINY_HF))
    checkpoint = random_checkpoint(str(tmp_path / "ckpt" / "model.ckpt"), slots=False)
    umask = os.umask(0o027)
    try:
        hf.export_hf(checkpoint, config, str(tmp_path / "hf"))
        hf.import_hf(str(tmp_path / "hf"), str(tmp_path / "back"))
    finally:
        os.umask(umask)
    for directory in (tmp_path / "hf", tmp_path / "back"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o750
        assert {stat.S_IMODE(f.stat().st_mode) for f in directory.iterdir()} == {0o640}
    assert sorted(os.listdir(str(tmp_path))) == ["back", "ckpt", "dataset_configs", "hf", "modes.json"]


def test_cli_round_trip_runs_without_torch(make_config, tmp_path):
    """`python -m convert.huggingface` with torch and transformers made unimportable."""
    blocker = tmp_path / "blocker"
    for name in ("torch", "transformers"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text("raise ImportError('the converter must not import %s')\n" % name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), REPO]))
    config_path = make_config("no_torch", **TINY_HF)
    checkpoint = random_checkpoint(str(tmp_path / "ckpt" / "model.ckpt"))

    def convert(*argv):
        result = subprocess.run([sys.executable, "-m", "gpt_neo_mtf.cli.huggingface", *argv], cwd=REPO, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    assert "exported" in convert("export", "--model", config_path, "--model_path", checkpoint,
                                 "--output_dir", str(tmp_path / "hf"))
    assert "imported" in convert("import", "--hf_dir", str(tmp_path / "hf"), "--output_dir", str(tmp_path / "back"))
    original = checkpoint_variables(checkpoint)
    back = checkpoint_variables(str(tmp_path / "back" / "model.ckpt-0"))
    assert original.pop("global_step")[2] == 7 and back.pop("global_step")[2] == 0
    model = {n: v for n, v in original.items() if "adam" not in n}
    assert model.keys() == back.keys() and all(model[n][2].tobytes() == back[n][2].tobytes() for n in model)


def test_export_and_import_in_a_gcs_bucket(make_config, tmp_path, gcs_bucket):
    config = load_config(make_config("gcs", **TINY_HF))
    checkpoint = random_checkpoint(str(tmp_path / "ckpt" / "model.ckpt"))
    exported = gcs_bucket + "/convert/hf"
    hf.export_hf(checkpoint, config, exported)
    assert sorted(tf.io.gfile.listdir(exported)) == GPT2_EXPORT
    local = tmp_path / "hf"
    local.mkdir()
    for name in ("config.json", "model.safetensors"):
        tf.io.gfile.copy(exported + "/" + name, str(local / name))
    # A pytorch_model.bin in the bucket too (read through zipfile on a gs:// file object).
    torch.save(hf_load(str(local)).state_dict(), str(tmp_path / "pytorch_model.bin"))
    bin_dir = gcs_bucket + "/convert/bin"
    tf.io.gfile.makedirs(bin_dir)
    tf.io.gfile.copy(str(local / "config.json"), bin_dir + "/config.json")
    tf.io.gfile.copy(str(tmp_path / "pytorch_model.bin"), bin_dir + "/pytorch_model.bin")

    model = {n: v for n, v in checkpoint_variables(checkpoint).items() if "adam" not in n and n != "global_step"}
    for source, target in ((exported, "/convert/imported"), (bin_dir, "/convert/imported_bin")):
        prefix, names = hf.import_hf(source, gcs_bucket + target, "bfloat16")
        assert prefix == gcs_bucket + target + "/model.ckpt-0" == tf.train.latest_checkpoint(gcs_bucket + target)
        assert names == (["config_from_hf.json", "merges.txt", "tokenizer.json", "vocab.json"] if source == exported
                         else ["config_from_hf.json"])
        back = checkpoint_variables(prefix)
        assert back.pop("global_step")[2] == 0 and back.keys() == model.keys()
        for name, (_, _, value) in back.items():
            assert value.tobytes() == model[name][2].astype(hf.BFLOAT16).tobytes(), name
        written = json.loads(tf.io.gfile.GFile(gcs_bucket + target + "/config_from_hf.json").read())
        assert written["model_path"] == gcs_bucket + target


# ---------------------------------------------------------------------------------------------
# The export in HuggingFace's own tools, offline: AutoTokenizer, pipeline("text-generation"),
# lm-evaluation-harness; import of a hub id


# Read by huggingface_hub, transformers and datasets when they are imported: only a new process honours them.
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
TESTS = os.path.dirname(os.path.abspath(__file__))
ENCODED = ["Hello world", " a leading space, <|endoftext|> inside", "ünïcödé 日本語\n\n\ttabs  and   spaces",
           "<|endoftext|>", "def main():\n    return 0\n"]
PROMPT = "def main():\n    print("


def offline_env(tmp_path):
    """A process environment without the hub, with a HuggingFace cache of its own."""
    return dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), **OFFLINE)


def offline_call(tmp_path, function, *args):
    """`function(*args)` (a function of this module, JSON in and out) run in a new Python offline."""
    code = ("import json, sys; sys.path[:0] = [%r, %r]; import test_huggingface_convert as t; "
            "print(json.dumps(t.%s(*json.loads(sys.argv[1]))))" % (TESTS, REPO, function.__name__))
    done = subprocess.run([sys.executable, "-c", code, json.dumps(args)], cwd=str(tmp_path), env=offline_env(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def transformers_view(directory, prompt, generate, strings, slow):
    """What transformers makes of an export directory: pipeline("text-generation")'s continuation of
    `prompt` (ids and text) with `generate` arguments, the warnings of its generation config, and the
    ids, decoded texts and special-token ids of `strings` by AutoTokenizer (and with `slow` its slow form)."""
    generator = pipeline("text-generation", model=directory, tokenizer=directory)
    view = {"ids": generator(prompt, return_tensors=True, **generate)[0]["generated_token_ids"],
            "text": generator(prompt, return_full_text=False, **generate)[0]["generated_text"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        GenerationConfig.from_pretrained(directory).validate()
    view["generation_warnings"] = [str(w.message) for w in caught]
    for fast in (True, False) if slow else (True,):
        tokenizer = AutoTokenizer.from_pretrained(directory, use_fast=fast)
        encoded = [tokenizer(s)["input_ids"] for s in strings]
        view["fast" if fast else "slow"] = {
            "class": type(tokenizer).__name__, "ids": encoded,
            "decoded": [tokenizer.decode(ids, skip_special_tokens=True) for ids in encoded],
            "special": [tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id]}
    return view


def train_tiny(root, records, dataset, **model):
    """TINY_HF (changed by `model`) trained 3 steps on records/train (dataset config `dataset`); its config path."""
    (root / "dataset_configs").mkdir()
    (root / "dataset_configs" / "data.json").write_text(json.dumps(dict(dataset, path=records + "/train/*.tfrecords")))
    raw = dict(TINY, **dict(TINY_HF, **model), train_steps=3, iterations=3, model_path=str(root / "model"),
               datasets=[["data", None, None, None]])
    (root / "model.json").write_text(json.dumps(raw))
    assert run_main("--model", str(root / "model.json")) == 0
    return str(root / "model.json")


@pytest.fixture(scope="module")
def gpt2_model(tmp_path_factory, sample_records):
    """A tiny model on GPT-2 tokens whose config samples greedily, 12 new tokens."""
    dataset = {"n_vocab": 50257, "tokenizer_path": "gpt2", "eos_id": 50256, "padding_id": 50256}
    return train_tiny(tmp_path_factory.mktemp("gpt2_model"), sample_records(TINY_HF["n_ctx"]), dataset,
                      temperature=0, predict_max_steps=12)


@pytest.fixture(scope="module")
def trained_tokenizer_model(tmp_path_factory):
    """A tiny model on tokens of a tokenizer that train_tokenizer trained on the sample corpus; its config
    samples at temperature 0.7 with top_k 5 and top_p 0.9, up to n_ctx."""
    root = tmp_path_factory.mktemp("trained_tokenizer_model")
    corpus = os.path.join(SAMPLE, "train.jsonl.zst")
    assert train_tokenizer_command.main(["--input", corpus, "--output_dir", str(root / "tokenizer"),
                                 "--vocab_size", "1000"]) == 0
    path = train_tokenizer.tokenizer_path(str(root / "tokenizer"))
    create_tfrecords(corpus, str(root / "records" / "train"), path, name="data", chunk_size=TINY_HF["n_ctx"],
                     files_per=300)
    dataset = train_tokenizer.dataset_config_entries(path, load_tokenizer(path).get_vocab_size())
    return train_tiny(root, str(root / "records"), dataset, n_vocab=1000, temperature=0.7, top_k=5, top_p=0.9)


@pytest.mark.parametrize("kind, predict_flags, generate, generation_config", [
    # The config's own sampling keys on both sides: greedy, 12 tokens.
    ("gpt2", [], {}, {"bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": 50256, "do_sample": False,
                      "max_new_tokens": 12}),
    ("trained_tokenizer", ["--temperature", "0", "--max_new_tokens", "12"], {"do_sample": False, "max_new_tokens": 12},
     {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 1, "do_sample": True, "temperature": 0.7, "top_k": 5,
      "top_p": 0.9, "max_length": 64}),
])
def test_pipeline_and_autotokenizer_offline_equal_predict_and_our_tokenizer(kind, predict_flags, generate,
                                                                          generation_config, request, tmp_path):
    config_path = request.getfixturevalue(kind + "_model")
    (tmp_path / "prompt.txt").write_text(PROMPT)
    out = str(tmp_path / "ours")
    assert run_main("--model", config_path, "--predict", "--prompt", str(tmp_path / "prompt.txt"), "--output", out,
                    *predict_flags) == 0
    [ours] = [json.loads(line) for line in open(out + ".jsonl")]
    exported = tmp_path / "hf"
    assert hf_command.main(["export", "--model", config_path, "--output_dir", str(exported)]) == 0
    assert json.loads((exported / "generation_config.json").read_text()) == generation_config

    theirs = offline_call(tmp_path, transformers_view, str(exported), PROMPT, generate, ENCODED, kind == "gpt2")
    eos = generation_config["eos_token_id"]
    prompt_length = len(ours["prompt_tokens"])
    assert theirs["ids"][:prompt_length] == ours["prompt_tokens"]
    continuation = theirs["ids"][prompt_length:]
    continuation = continuation[:continuation.index(eos)] if eos in continuation else continuation
    assert continuation == ours["tokens"] and len(continuation) > 0
    assert theirs["text"] == ours["text"]
    assert theirs["generation_warnings"] == []

    tokenizer = tokenizer_for(load_config(config_path).data)
    expected = [tokenizer.encode(s).ids for s in ENCODED]
    assert expected[3] == [eos]  # <|endoftext|> is one special token
    classes = {"fast": "GPT2TokenizerFast", "slow": "GPT2Tokenizer"} if kind == "gpt2" else \
        {"fast": "PreTrainedTokenizerFast"}
    for form, view in ((form, theirs[form]) for form in classes):
        assert view["class"] == classes[form]
        assert view["ids"] == expected
        assert view["decoded"] == [tokenizer.decode(ids) for ids in expected]
        assert view["special"] == [eos, eos, generation_config["pad_token_id"]]


def test_pretrained_gpt2_gets_its_padding_token_where_the_model_has_a_row_for_it(make_config, tmp_path):
    """tokenizer_is_pretrained (the Pile configs) adds `<|padding|>` = 50257: it is the pad of a 50304-row export;
    a 50257-row export has no row for it, so eos pads."""
    config_path = make_config("pile_like", **dict(TINY_HF, n_vocab=50304))
    dataset_config = tmp_path / "dataset_configs" / "sample.json"
    dataset_config.write_text(json.dumps(dict(json.loads(dataset_config.read_text()), tokenizer_is_pretrained=True,
                                              padding_id=50257)))
    config = load_config(config_path)
    checkpoint = random_checkpoint(str(tmp_path / "ckpt" / "model.ckpt"), n_vocab=50304)
    ours = load_tokenizer("gpt2", pretrained=True).encode("a<|padding|>b<|endoftext|>").ids
    assert ours == [64, 50257, 65, 50256]
    for vocab_size, pad in ((50304, 50257), (50257, 50256)):
        exported = str(tmp_path / ("hf_%d" % vocab_size))
        hf.export_hf(checkpoint, config, exported, vocab_size)
        assert json.load(open(os.path.join(exported, "generation_config.json")))["pad_token_id"] == pad
        for fast in (True, False):
            tokenizer = AutoTokenizer.from_pretrained(exported, use_fast=fast)
            assert tokenizer("a<|padding|>b<|endoftext|>")["input_ids"] == ours
            assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (50256, pad)


def test_export_without_a_dataset_writes_no_tokenizer_and_says_so(make_config, tmp_path, capsys):
    config_path = make_config("no_data", **TINY_HF)
    checkpoint = random_checkpoint(str(tmp_path / "ckpt" / "model.ckpt"))
    exported = tmp_path / "hf"
    assert hf_command.main(["export", "--model", config_path, "--model_path", checkpoint, "--output_dir", str(exported),
                    "no_dataset=true", "datasets=[]"]) == 0
    assert sorted(os.listdir(str(exported))) == ["config.json", "generation_config.json", "model.safetensors"]
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["note: no tokenizer files in %s: the config has no dataset, or its dataset config no "
                       "tokenizer_path; give transformers a tokenizer yourself (tokenizer=...)" % exported]


# A multiple-choice task of lm-evaluation-harness over a local JSONL file (lm-eval 0.4's task YAML).
CHOICE_TASK = """task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: %s
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
CHOICE_DOCS = [
    {"question": "The capital of France is", "choices": ["Paris", "London", "a banana"], "answer": 0},
    {"question": "def main():\n    ", "choices": ["return 0", "print(", "banana"], "answer": 1},
    {"question": "import numpy as", "choices": ["np", "pd", "the"], "answer": 0},
    {"question": "The meaning of life is", "choices": ["42", "not a number", "forty-two", "unknown"], "answer": 3},
]


def harness_requests(tokenizer, docs):
    """[(tokens, continuation start)] of each (doc, choice), tokenized as the harness does for a causal model:
    the continuation is " " + choice, the context's trailing whitespace moves into it, and the whole text is
    encoded at once, the context's own token count marking where the continuation starts."""
    requests = []
    for doc in docs:
        for choice in doc["choices"]:
            context, continuation = doc["question"], " " + choice
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            requests.append((tokenizer.encode(context + continuation).ids, len(tokenizer.encode(context).ids)))
    return requests


def test_lm_eval_harness_on_the_export_scores_as_our_model(gpt2_model, tmp_path):
    """`lm_eval --model hf` (0.4.13) on the export, offline, with a local task: its per-choice log-likelihoods
    equal our model's (the Mesh-TF checkpoint's logits) to 1e-3, its acc and acc_norm exactly."""
    config = load_config(gpt2_model)
    exported = str(tmp_path / "hf")
    hf.export_hf(config.model_path, config, exported)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_choice.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in CHOICE_DOCS))
    (tasks / "tiny_choice.yaml").write_text(CHOICE_TASK % (tasks / "tiny_choice.jsonl"))
    lm_eval = os.path.join(os.path.dirname(sys.executable), "lm_eval")
    done = subprocess.run([lm_eval, "--model", "hf", "--model_args", "pretrained=" + exported, "--tasks", "tiny_choice",
                           "--include_path", str(tasks), "--device", "cpu", "--output_path", str(tmp_path / "results"),
                           "--log_samples"], cwd=str(tmp_path), env=offline_env(tmp_path), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    [results] = [json.load(open(p)) for p in glob.glob(str(tmp_path / "results" / "*" / "results_*.json"))]
    [samples] = glob.glob(str(tmp_path / "results" / "*" / "samples_tiny_choice_*.jsonl"))
    samples = sorted((json.loads(line) for line in open(samples)), key=lambda sample: sample["doc_id"])
    theirs = [[float(resp[0][0]) for resp in sample["resps"]] for sample in samples]

    requests = harness_requests(load_tokenizer("gpt2"), CHOICE_DOCS)
    ids = np.zeros((len(requests), config.model.n_ctx), np.int32)
    for row, (tokens, _) in enumerate(requests):
        ids[row, :len(tokens)] = tokens
    logits = checkpoint_logits(config, tf.train.latest_checkpoint(config.model_path), ids).astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    flat = [sum(log_probs[row, t - 1, tokens[t]] for t in range(start, len(tokens)))
            for row, (tokens, start) in enumerate(requests)]
    ours = [flat[sum(len(d["choices"]) for d in CHOICE_DOCS[:i]):][:len(doc["choices"])]
            for i, doc in enumerate(CHOICE_DOCS)]
    np.testing.assert_allclose(np.concatenate(theirs), np.concatenate(ours), atol=1e-3)

    answers = [doc["answer"] for doc in CHOICE_DOCS]
    acc = np.mean([np.argmax(lls) == answer for lls, answer in zip(ours, answers)])
    acc_norm = np.mean([np.argmax(np.array(lls) / [len(c) for c in doc["choices"]]) == doc["answer"]
                        for lls, doc in zip(ours, CHOICE_DOCS)])
    scores = results["results"]["tiny_choice"]
    assert (scores["acc,none"], scores["acc_norm,none"]) == (acc, acc_norm)
    assert results["n-samples"]["tiny_choice"] == {"original": len(CHOICE_DOCS), "effective": len(CHOICE_DOCS)}


def test_import_of_a_hub_id(make_config, tmp_path, capsys, monkeypatch):
    """A path that exists is read as a directory even when it reads like a hub id; one that does not is
    downloaded from the hub, which offline is one error line."""
    config = load_config(make_config("hub", **TINY_HF))
    checkpoint = random_checkpoint(str(tmp_path / "ckpt" / "model.ckpt"))
    hf.export_hf(checkpoint, config, str(tmp_path / "EleutherAI" / "gpt-neo-tiny"))
    monkeypatch.chdir(tmp_path)
    assert hf_command.main(["import", "--hf_dir", "EleutherAI/gpt-neo-tiny", "--output_dir", "imported"]) == 0
    assert "imported EleutherAI/gpt-neo-tiny to imported/model.ckpt-0" in capsys.readouterr().out
    assert checkpoint_variables("imported/model.ckpt-0")["gpt2/wte"][2].tobytes() == \
        checkpoint_variables(checkpoint)["gpt2/wte"][2].tobytes()

    message = ("error: EleutherAI/gpt-neo-125M is not a directory here, and downloading it from the HuggingFace hub "
               "failed (%s); download it where the hub is reachable (huggingface-cli download "
               "EleutherAI/gpt-neo-125M --local-dir DIR) and give that directory")
    done = subprocess.run([sys.executable, "-m", "gpt_neo_mtf.cli.huggingface", "import", "--hf_dir", "EleutherAI/gpt-neo-125M",
                           "--output_dir", str(tmp_path / "neo")], cwd=REPO, env=offline_env(tmp_path),
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if "error:" in line] == [message % "HF_HUB_OFFLINE is set"]
    if small_receive_buffers():  # tests/isolated.sh's namespace: no network at all (else this could download)
        err = cli_error(capsys, "import", "--hf_dir", "EleutherAI/gpt-neo-125M", "--output_dir", str(tmp_path / "neo"))
        assert err == message % "the hub cannot be reached from this machine" + "\n"
    assert not os.path.exists(str(tmp_path / "neo"))

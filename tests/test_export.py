"""--export: the SavedModels load with plain TensorFlow and compute what the checkpoint does."""
import json
import os
import re
import subprocess
import sys

import numpy as np
from conftest import REPO, checkpoint_logits, run_main

from gpt_neo_mtf.convert import huggingface as hf
from gpt_neo_mtf.convert.huggingface import BFLOAT16
from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.trainer.config import load_config


def documented_snippet(page=os.path.join(REPO, "docs", "sampling-and-export.md")):
    """The page's Python block that runs the exported models, so the documented code is the tested code.
    In it `ids` and `prompts` are int arrays [predict_batch_size, n_ctx] (prompts padded), `lengths` the
    prompts' lengths."""
    with open(page) as f:
        blocks = re.findall(r"^```python\n(.*?)^```$", f.read(), re.M | re.S)
    [snippet] = [block for block in blocks if "tf.saved_model.load" in block]
    return snippet


SNIPPET = documented_snippet()


def served(export_dir, ids, prompts, lengths):
    """(logits, generated ids) from running SNIPPET on the models in `export_dir` in a fresh Python:
    TensorFlow 2 as a user imports it (eager), none of this project's modules."""
    root = os.path.dirname(export_dir)
    code = SNIPPET.replace("export/", os.path.basename(export_dir) + "/")
    for name in ("logits", "generate"):
        [timestamp] = os.listdir(os.path.join(export_dir, name))
        code = code.replace("%s/<timestamp>" % name, "%s/%s" % (name, timestamp))
    np.savez(os.path.join(root, "inputs.npz"), ids=ids, prompts=prompts, lengths=lengths)
    script = "\n".join([
        "import numpy as np",
        "inputs = np.load('inputs.npz')",
        "ids, prompts, lengths = inputs['ids'], inputs['prompts'], inputs['lengths']",
        code,
        "assert tf.executing_eagerly()",
        "np.savez('served.npz', logits=logits.numpy(), ids=generated.numpy())"])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(os.path.join(root, "served.npz"))
    return out["logits"], out["ids"]


def prompts_of(samples, n_ctx):
    """--predict's prompts as the exported generation takes them: padded rows and their lengths."""
    prompts = np.zeros((len(samples), n_ctx), np.int32)
    lengths = np.array([len(s["prompt_tokens"]) for s in samples], np.int32)
    for row, sample in enumerate(samples):
        prompts[row, :lengths[row]] = sample["prompt_tokens"]
    return prompts, lengths


def test_exported_logits_and_generation_match_the_checkpoint(make_config, tmp_path):
    # A 2-device mesh: the export is a single-device model all the same.
    path = make_config("exported", mesh_shape="x:2", layout="batch:x", train_batch_size=4, predict_batch_size=2,
                       train_steps=4, iterations=2, temperature=0, predict_max_steps=6)
    assert run_main("--model", path) == 0
    export_dir = str(tmp_path / "export")
    # As a user runs it: a successful export logs no ERROR line (TensorFlow's included).
    result = subprocess.run([sys.executable, "main.py", "--model", path, "--export", "--export_dir", export_dir],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported logits to" in result.stderr + result.stdout
    assert "ERROR" not in result.stderr + result.stdout, result.stderr[-3000:]
    config = load_config(path)

    prompt_file = tmp_path / "p.jsonl"
    prompt_file.write_text('{"prompt": "Lists are"}\n{"prompt": "The with statement is used to"}\n')
    assert run_main("--model", path, "--predict", "--prompt", str(prompt_file), "--output", str(tmp_path / "s")) == 0
    samples = [json.loads(line) for line in open(str(tmp_path / "s") + ".jsonl")]
    prompts, lengths = prompts_of(samples, 32)
    ids = np.random.RandomState(0).randint(0, 50257, size=(2, 32)).astype(np.int32)
    logits, generated = served(export_dir, ids, prompts, lengths)

    expected = checkpoint_logits(config, tf.train.latest_checkpoint(config.model_path), ids)
    assert np.abs(logits - expected).max() <= 1e-5
    for row, sample in enumerate(samples):
        tokens = generated[row, lengths[row]:lengths[row] + 6].tolist()
        assert tokens[:len(sample["tokens"])] == sample["tokens"]


def test_export_without_checkpoint_is_an_error(make_config, capsys):
    assert run_main("--model", make_config("nothing"), "--export") == 2
    assert "--export: no checkpoint in" in capsys.readouterr().err


def test_bfloat16_masters_with_a_padded_vocab_export(make_config, tmp_path):
    """A checkpoint as some GPT-Neo configs train them: bf16 masters, wte padded to 50304 rows,
    no optimizer slots; the config says 50257. The export serves the float32 weights' logits."""
    path = make_config("padded", predict_batch_size=2, temperature=0, predict_max_steps=4)
    config = load_config(path)
    m = config.model
    rng = np.random.RandomState(1)
    weights = [(var.name, rng.normal(scale=0.05, size=var.shape).astype(np.float32))
               for var in hf.variable_table(m.n_embd, m.n_layer, m.n_ctx, n_vocab=50304)]
    hf.write_checkpoint(config.model_path + "/model.ckpt", [(n, w.astype(BFLOAT16)) for n, w in weights], 9)
    as_served = [(n, w.astype(BFLOAT16).astype(np.float32)[:m.n_vocab] if n == "gpt2/wte" else
                  w.astype(BFLOAT16).astype(np.float32)) for n, w in weights]
    reference = hf.write_checkpoint(str(tmp_path / "reference" / "model.ckpt"), as_served, 9)

    export_dir = str(tmp_path / "export")
    assert run_main("--model", path, "--export", "--export_dir", export_dir) == 0
    # --predict reads the same checkpoint (cast, rows cut at restore): greedy tokens equal the export's.
    prompt_file = tmp_path / "p.jsonl"
    prompt_file.write_text('{"prompt": "Lists are"}\n{"prompt": "The with statement"}\n')
    assert run_main("--model", path, "--predict", "--prompt", str(prompt_file), "--output", str(tmp_path / "s")) == 0
    samples = [json.loads(line) for line in open(str(tmp_path / "s") + ".jsonl")]
    prompts, lengths = prompts_of(samples, m.n_ctx)
    ids = np.random.RandomState(0).randint(0, 50257, size=(2, m.n_ctx)).astype(np.int32)
    logits, generated = served(export_dir, ids, prompts, lengths)

    assert np.abs(logits - checkpoint_logits(config, reference, ids)).max() <= 1e-5
    for row, sample in enumerate(samples):
        assert len(sample["tokens"]) == 4 and generated[row, lengths[row]:lengths[row] + 4].tolist() == sample["tokens"]

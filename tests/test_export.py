"""--export: the SavedModels load with plain TensorFlow and compute what the checkpoint does."""
import json
import os

import numpy as np
from conftest import checkpoint_logits, run_main

from convert import huggingface as hf
from convert.huggingface import BFLOAT16
from meshtf import tf
from trainer.config import load_config


def run_saved_model(path, inputs):
    with tf.Graph().as_default(), tf.Session() as session:
        meta = tf.saved_model.loader.load(session, ["serve"], path)
        signature = meta.signature_def["serving_default"]
        feed = {signature.inputs[k].name: v for k, v in inputs.items()}
        fetches = {k: t.name for k, t in signature.outputs.items()}
        return session.run(fetches, feed)


def test_exported_logits_and_generation_match_the_checkpoint(make_config, tmp_path):
    # A 2-device mesh: the export is a single-device model all the same.
    path = make_config("exported", mesh_shape="x:2", layout="batch:x", train_batch_size=4, predict_batch_size=2,
                       train_steps=4, iterations=2, temperature=0, predict_max_steps=6)
    assert run_main("--model", path) == 0
    export_dir = str(tmp_path / "export")
    assert run_main("--model", path, "--export", "--export_dir", export_dir) == 0
    config = load_config(path)
    ids = np.random.RandomState(0).randint(0, 50257, size=(2, 32)).astype(np.int32)

    [logits_dir] = os.listdir(os.path.join(export_dir, "logits"))
    out = run_saved_model(os.path.join(export_dir, "logits", logits_dir), {"input_ids": ids})
    expected = checkpoint_logits(config, tf.train.latest_checkpoint(config.model_path), ids)
    assert np.abs(out["logits"] - expected).max() <= 1e-5

    prompt_file = tmp_path / "p.jsonl"
    prompt_file.write_text('{"prompt": "Lists are"}\n{"prompt": "The with statement is used to"}\n')
    assert run_main("--model", path, "--predict", "--prompt", str(prompt_file), "--output", str(tmp_path / "s")) == 0
    samples = [json.loads(line) for line in open(str(tmp_path / "s") + ".jsonl")]
    prompts = np.zeros((2, 32), np.int32)
    lengths = np.array([len(s["prompt_tokens"]) for s in samples], np.int32)
    for row, sample in enumerate(samples):
        prompts[row, :lengths[row]] = sample["prompt_tokens"]
    [generate_dir] = os.listdir(os.path.join(export_dir, "generate"))
    out = run_saved_model(os.path.join(export_dir, "generate", generate_dir),
                          {"input_ids": prompts, "lengths": lengths})
    for row, sample in enumerate(samples):
        generated = out["ids"][row, lengths[row]:lengths[row] + 6].tolist()
        assert generated[:len(sample["tokens"])] == sample["tokens"]


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
    served = [(n, w.astype(BFLOAT16).astype(np.float32)[:m.n_vocab] if n == "gpt2/wte" else
               w.astype(BFLOAT16).astype(np.float32)) for n, w in weights]
    reference = hf.write_checkpoint(str(tmp_path / "reference" / "model.ckpt"), served, 9)

    export_dir = str(tmp_path / "export")
    assert run_main("--model", path, "--export", "--export_dir", export_dir) == 0
    ids = np.random.RandomState(0).randint(0, 50257, size=(2, m.n_ctx)).astype(np.int32)
    [logits_dir] = os.listdir(os.path.join(export_dir, "logits"))
    out = run_saved_model(os.path.join(export_dir, "logits", logits_dir), {"input_ids": ids})
    assert np.abs(out["logits"] - checkpoint_logits(config, reference, ids)).max() <= 1e-5

    # --predict reads the same checkpoint (cast, rows cut at restore): greedy tokens equal the export's.
    prompt_file = tmp_path / "p.jsonl"
    prompt_file.write_text('{"prompt": "Lists are"}\n{"prompt": "The with statement"}\n')
    assert run_main("--model", path, "--predict", "--prompt", str(prompt_file), "--output", str(tmp_path / "s")) == 0
    samples = [json.loads(line) for line in open(str(tmp_path / "s") + ".jsonl")]
    prompts = np.zeros((2, m.n_ctx), np.int32)
    lengths = np.array([len(s["prompt_tokens"]) for s in samples], np.int32)
    for row, sample in enumerate(samples):
        prompts[row, :lengths[row]] = sample["prompt_tokens"]
    [generate_dir] = os.listdir(os.path.join(export_dir, "generate"))
    out = run_saved_model(os.path.join(export_dir, "generate", generate_dir), {"input_ids": prompts, "lengths": lengths})
    for row, sample in enumerate(samples):
        assert len(sample["tokens"]) == 4 and out["ids"][row, lengths[row]:lengths[row] + 4].tolist() == sample["tokens"]

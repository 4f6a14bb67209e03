"""--export: the SavedModels load with plain TensorFlow and compute what the checkpoint does."""
import json
import os

import numpy as np
from conftest import checkpoint_logits, run_main

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

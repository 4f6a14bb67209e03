"""End-to-end training through the real main.py: resume, determinism, mesh invariance, eval, checkpoints."""
import json
import os

import numpy as np
import pytest
from conftest import REPO, checkpoint_logits, run_main, scalars
from reference_models import hf_logits_from_mesh_tf_checkpoint

from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.trainer.config import load_config


def losses(model_path):
    return scalars(model_path, "loss")


def test_stop_and_resume_equals_uninterrupted(make_config):
    whole = make_config("whole", train_steps=40, lr_decay_end=40)
    assert run_main("--model", whole) == 0
    halves = make_config("halves", train_steps=20, lr_decay_end=40)
    assert run_main("--model", halves) == 0
    assert sorted(losses(json.load(open(halves))["model_path"])) == list(range(1, 21))
    resumed = make_config("halves", train_steps=40, lr_decay_end=40)  # same model_path, on to step 40
    assert run_main("--model", resumed) == 0

    expected = losses(json.load(open(whole))["model_path"])
    got = losses(json.load(open(resumed))["model_path"])
    assert sorted(got) == sorted(expected) == list(range(1, 41))
    np.testing.assert_allclose([got[s] for s in range(1, 41)], [expected[s] for s in range(1, 41)],
                               rtol=0, atol=1e-6)
    assert expected[40] < expected[1]


def test_two_identical_runs_give_identical_losses(make_config):
    first, second = make_config("first"), make_config("second")
    assert run_main("--model", first) == 0 and run_main("--model", second) == 0
    a = losses(json.load(open(first))["model_path"])
    b = losses(json.load(open(second))["model_path"])
    assert len(a) == 10 and a == b


@pytest.mark.parametrize("layout", ["batch:x,heads:y,vocab:y", "batch:x,embd:y"])
def test_eight_device_mesh_trains_like_one_device(make_config, layout):
    # A vocab padded to 50304 rows (as in the original's configs) splits over y:4.
    one = make_config("one", train_steps=5, train_batch_size=8, n_vocab=50304)
    eight = make_config("eight", train_steps=5, train_batch_size=8, n_vocab=50304, mesh_shape="x:2,y:4",
                        layout=layout)
    assert run_main("--model", one) == 0 and run_main("--model", eight) == 0
    a = losses(json.load(open(one))["model_path"])
    b = losses(json.load(open(eight))["model_path"])
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)


def test_demo_config_evaluates_periodically_with_falling_loss(make_config, capsys):
    """The README demo's config (shortened), on TFRecords made from the shipped sample corpus."""
    demo = json.load(open(os.path.join(REPO, "configs", "demo_cpu.json")))
    del demo["model_path"], demo["datasets"]
    path = make_config("demo", **dict(demo, train_steps=60, eval_steps=4, iterations=10))
    assert run_main("--model", path, "--steps_per_checkpoint", "30") == 0
    model_path = json.load(open(path))["model_path"]
    results = [json.loads(line) for line in open(os.path.join(model_path, "eval_results.jsonl"))]
    assert [r["global_step"] for r in results] == [30, 60]
    assert results[1]["loss"] < results[0]["loss"]
    for r in results:
        assert r["perplexity"] == pytest.approx(np.exp(r["cross_entropy"]), rel=1e-5)
        assert r["loss"] > r["cross_entropy"]  # the loss includes the z-loss term
    out = capsys.readouterr().out
    assert "eval at step 60" in out and "perplexity" in out and "tokens/s" in out
    # --eval alone evaluates the latest checkpoint again, on the same (deterministic) eval batches.
    assert run_main("--model", path, "--eval") == 0
    again = [json.loads(line) for line in open(os.path.join(model_path, "eval_results.jsonl"))][-1]
    assert again["loss"] == pytest.approx(results[1]["loss"], rel=1e-6)
    assert sorted(os.path.basename(p) for p in tf.io.gfile.glob(os.path.join(model_path, "model.ckpt-*.index"))) \
        == ["model.ckpt-0.index", "model.ckpt-30.index", "model.ckpt-60.index"]


def spec_variables(n_layer, D, V, N):
    """The checkpoint table of the spec (section 4.2) for a tied, all-default model trained with Adam."""
    F = 4 * D
    model = {"gpt2/wte": [V, D], "gpt2/wpe": [N, D], "gpt2/ln_f/g": [D], "gpt2/ln_f/b": [D]}
    for i in range(n_layer):
        model.update({
            "gpt2/h%d/norm_1/g" % i: [D], "gpt2/h%d/norm_1/b" % i: [D],
            "gpt2/h%d/attn/q" % i: [D, D], "gpt2/h%d/attn/k" % i: [D, D], "gpt2/h%d/attn/v" % i: [D, D],
            "gpt2/h%d/attn/o" % i: [D, D], "gpt2/h%d/attn/compute_output_bias/o_b" % i: [D],
            "gpt2/h%d/norm_2/g" % i: [D], "gpt2/h%d/norm_2/b" % i: [D],
            "gpt2/h%d/mlp/conv1d_main/c_fc/kernel" % i: [D, F], "gpt2/h%d/mlp/conv1d_main/c_fc/bias" % i: [F],
            "gpt2/h%d/mlp/conv1d_main/c_proj/kernel" % i: [F, D], "gpt2/h%d/mlp/conv1d_main/c_proj/bias" % i: [D],
        })
    table = {name: (shape, tf.float32) for name, shape in model.items()}
    for name, shape in model.items():
        table[name + "/adam_m"] = (shape, tf.float32)
        table[name + "/adam_v"] = (shape, tf.float32)
    table["global_step"] = ([], tf.int64)
    return table


def test_checkpoint_holds_exactly_the_original_variables(make_config):
    path = make_config("golden", train_steps=2, n_layer=2)
    assert run_main("--model", path) == 0
    checkpoint = tf.train.latest_checkpoint(json.load(open(path))["model_path"])
    reader = tf.train.load_checkpoint(checkpoint)
    found = {name: (shape, reader.get_variable_to_dtype_map()[name])
             for name, shape in reader.get_variable_to_shape_map().items()}
    assert found == spec_variables(n_layer=2, D=32, V=50257, N=32)


def test_huggingface_loader_reads_our_checkpoint(make_config, tmp_path):
    """HF's own converter + loader on a trained checkpoint whose sequences exceed the 256-token window."""
    path = make_config("hf", n_ctx=512, n_layer=2, local_attention_radius=256, train_batch_size=2,
                       train_steps=6, iterations=3)
    assert run_main("--model", path) == 0
    config = load_config(path)
    checkpoint = tf.train.latest_checkpoint(config.model_path)
    ids = np.random.RandomState(0).randint(0, 50257, size=(2, 512))
    ours = checkpoint_logits(config, checkpoint, ids)
    theirs = hf_logits_from_mesh_tf_checkpoint(checkpoint, json.load(open(path)), ids, str(tmp_path))
    assert np.abs(ours - theirs).max() <= 1e-4
    # Training moved the weights away from their initial values.
    reader = tf.train.load_checkpoint(checkpoint)
    assert reader.get_tensor("global_step") == 6
    assert np.abs(reader.get_tensor("gpt2/h0/norm_1/g") - 1).max() > 1e-4


def test_eval_without_a_checkpoint_is_a_one_line_error(make_config, capsys):
    path = make_config("untrained", eval_steps=2)
    assert run_main("--model", path, "--eval") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --eval: no checkpoint in ") and err.count("\n") == 1

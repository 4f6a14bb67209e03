"""main.py's command line beyond the modes themselves: KEY=VALUE overrides recorded with the run, the
original's flags --sacred_id, --new and --entmax_sampling, and decoding ids the tokenizer lacks."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from conftest import REPO, make, run_main

from gpt_neo_mtf.cli import huggingface
from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models.context import Context
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.models.entmax import ALPHA
from gpt_neo_mtf.models.sampling import PredictConfig, choose
from gpt_neo_mtf.trainer.checkpoints import latest_step

ONE_LAYER = ["n_layer=1", "attention_types=[[[\"global\"], 1]]"]


def test_overrides_are_typed_and_recorded_with_the_run(make_config, capsys):
    config = make_config(train_steps=1, iterations=1)
    assert run_main("--model", config, *ONE_LAYER, "lr=0.01") == 0
    model_path = json.load(open(config))["model_path"]
    recorded = json.load(open(os.path.join(model_path, "config.json")))
    assert recorded == dict(json.load(open(config)), n_layer=1, attention_types=[[["global"], 1]], lr=0.01)
    out = capsys.readouterr().out
    assert 'config tiny with n_layer=1 attention_types=[[["global"], 1]] lr=0.01' in out


def test_a_run_predicts_and_evaluates_from_its_model_path_alone(make_config, tmp_path, capsys):
    """Training records its config (with the overrides) and dataset configs in model_path; --predict and
    --eval then need only --model_path, wherever the run's config and dataset configs were."""
    config = make_config(train_steps=1, iterations=1, eval_steps=1)
    model_path = json.load(open(config))["model_path"]
    assert run_main("--model", config, *ONE_LAYER) == 0
    shutil.rmtree(os.path.dirname(config) + "/dataset_configs")
    os.remove(config)
    assert sorted(os.listdir(os.path.join(model_path, "dataset_configs"))) == ["sample.json"]
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon a time")
    assert run_main("--model_path", model_path, "--predict", "--prompt", str(prompt), "--max_new_tokens", "2") == 0
    # The float32 checkpoint sampled in bfloat16 (its weights cast at restore)
    assert run_main("--model_path", model_path, "predict_precision=bfloat16", "--predict", "--prompt", str(prompt),
                    "--max_new_tokens", "2") == 0
    assert run_main("--model_path", model_path, "--eval") == 0
    out = capsys.readouterr().out
    assert out.count("SAMPLE 0") == 2 and "eval at step 1" in out
    assert huggingface.main(["export", "--model_path", model_path, "--output_dir", str(tmp_path / "hf")]) == 0
    assert json.load(open(tmp_path / "hf" / "config.json"))["num_layers"] == 1


def test_sacred_id_names_samples_and_evaluation_results(make_config, tmp_path, capsys):
    config = make_config(train_steps=1, iterations=5, eval_steps=1)
    model_path = json.load(open(config))["model_path"]
    assert run_main("--model", config, *ONE_LAYER, "--sacred_id", "run7") == 0
    with open(os.path.join(model_path, "eval_run7.jsonl")) as f:
        assert [json.loads(line)["task"] for line in f] == ["validation"]
    assert not os.path.exists(os.path.join(model_path, "eval_results.jsonl"))
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon a time")
    assert run_main("--model", config, *ONE_LAYER, "--predict", "--prompt", str(prompt), "--max_new_tokens", "2",
                    "--sacred_id", "run7") == 0
    assert os.path.exists(os.path.join(model_path, "predictions_run7_1.txt"))
    assert "step 1/1 | loss" in capsys.readouterr().out  # train_steps 1 < iterations 5: still a loss line


def test_new_deletes_model_path_once_confirmed(make_config):
    config = make_config(train_steps=2, iterations=1)
    model_path = json.load(open(config))["model_path"]
    assert run_main("--model", config, *ONE_LAYER) == 0
    stale = os.path.join(model_path, "stale.txt")
    open(stale, "w").close()
    done = subprocess.run([sys.executable, os.path.join(REPO, "main.py"), "--model", config, *ONE_LAYER, "--new"],
                          input="y\n", capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "--new: delete %s and everything in it" % model_path in done.stdout
    assert not os.path.exists(stale) and latest_step(model_path) == 2
    assert "step 2/2 | loss" in done.stdout  # trained from scratch: the loss line covers steps 1 and 2


def entmax_probabilities(z, alpha=ALPHA):
    """α-entmax of a vector by bisection on its threshold, in float64 (the reference)."""
    z = (alpha - 1.0) * np.asarray(z, np.float64)
    low, high = z.max() - 1.0, z.max()
    for _ in range(100):
        tau = (low + high) / 2
        if (np.maximum(z - tau, 0) ** (1 / (alpha - 1))).sum() >= 1:
            low = tau
        else:
            high = tau
    p = np.maximum(z - low, 0) ** (1 / (alpha - 1))
    return p / p.sum()


def test_entmax_sampling_draws_from_entmax():
    rows, logits = 8000, np.array([2.0, 1.5, 1.0, -1.0, -3.0], np.float32)
    expected = entmax_probabilities(logits)
    assert expected[-1] == 0 and expected[-2] < 0.05  # sparse: the last token is outside the support
    config = make(n_vocab=len(logits), n_ctx=8).model
    d = Dims.build(config, rows)
    with tf.Graph().as_default():
        mesh = mtf.Mesh(mtf.Graph(), "mesh")
        batch_logits = mtf.import_fully_replicated(mesh, tf.constant(np.tile(logits, (rows, 1))),
                                                   mtf.Shape([d.batch, d.vocab]))
        step = mtf.constant(mesh, 3, dtype=tf.int32)
        chosen = choose(batch_logits, step, PredictConfig(temperature=1.0, entmax_sampling=True),
                        Context(d, config, train=False, seed=5))
        impl = mtf.placement_mesh_impl.PlacementMeshImpl(mtf.convert_to_shape("all:1"),
                                                          mtf.convert_to_layout_rules(""), ["/cpu:0"])
        lowering = mtf.Lowering(mesh.graph, {mesh: impl})
        with tf.Session() as session:
            tokens = session.run(lowering.export_to_tf_tensor(chosen))
    frequencies = np.bincount(tokens, minlength=len(logits)) / rows
    assert frequencies[-1] == 0
    np.testing.assert_allclose(frequencies, expected, atol=4 * np.sqrt(0.25 / rows))


def test_ids_beyond_the_tokenizer_decode_without_error(gpt2_tokenizer):
    """A padded table (n_vocab 50304) can sample ids GPT-2's tokenizer lacks: they decode to nothing."""
    hello, world = gpt2_tokenizer.encode("Hello world").ids
    assert gpt2_tokenizer.decode([hello, 50300, world, 50303]) == "Hello world"

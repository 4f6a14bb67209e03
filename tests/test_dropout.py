"""Dropout (mesh random ops, trainer/hardware.py): it drops, repeats across processes, resumes exactly."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, make, run_main, scalars

from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.trainer.hardware import Hardware, mesh_implementation

DROPOUT = dict(embed_dropout=0.1, attn_dropout=0.1, res_dropout=0.1)


def losses(config_path):
    return scalars(json.load(open(config_path))["model_path"], "loss")


def test_runs_in_separate_processes_give_identical_losses(make_config):
    # mesh-tf's own random ops were seeded from Python's unseeded `random` and string hashing.
    paths = [make_config(name, train_steps=3, iterations=3, **DROPOUT) for name in ("first", "second")]
    for path, hash_seed in zip(paths, ("1", "2")):
        subprocess.run([sys.executable, "main.py", "--model", path], cwd=REPO, check=True,
                       env=dict(os.environ, PYTHONHASHSEED=hash_seed), capture_output=True)
    first, second = (losses(path) for path in paths)
    assert sorted(first) == [1, 2, 3] and first == second


def test_stop_and_resume_with_dropout_equals_uninterrupted(make_config):
    whole = make_config("whole", lr_decay_end=10, **DROPOUT)
    assert run_main("--model", whole) == 0
    halves = make_config("halves", train_steps=5, lr_decay_end=10, **DROPOUT)
    assert run_main("--model", halves) == 0
    resumed = make_config("halves", lr_decay_end=10, **DROPOUT)  # same model_path, on to step 10
    assert run_main("--model", resumed) == 0
    expected, got = losses(whole), losses(resumed)
    assert sorted(got) == sorted(expected) == list(range(1, 11))
    np.testing.assert_allclose([got[s] for s in range(1, 11)], [expected[s] for s in range(1, 11)],
                               rtol=0, atol=1e-6)


def test_dropout_changes_the_loss(make_config):
    plain = make_config("plain", train_steps=1, iterations=1)
    dropped = make_config("dropped", train_steps=1, iterations=1, **DROPOUT)
    assert run_main("--model", plain) == 0 and run_main("--model", dropped) == 0
    assert abs(losses(plain)[1] - losses(dropped)[1]) > 1e-3


def test_mask_keeps_one_minus_rate_per_step_and_agrees_on_replicated_slices():
    config = make(mesh_shape="x:2", layout="batch:x", n_ctx=16)
    batch, embd = mtf.Dimension("batch", 64), mtf.Dimension("embd", 512)
    with tf.Graph().as_default():
        step = tf.placeholder(tf.int64, [])
        mesh_impl, _ = mesh_implementation(Hardware("cpu", ("/cpu:0", "/cpu:1")), config.mesh, {}, 7, step)
        mesh = mtf.Mesh(mtf.Graph(), "mesh")
        split = mtf.dropout(mtf.ones(mesh, [batch, embd]), is_training=True, rate=0.1)
        # [embd] is replicated on both devices; broadcast over the split batch, each device's rows
        # show the mask it drew for its own copy.
        replicated = mtf.ones(mesh, [batch]) * mtf.dropout(mtf.ones(mesh, [embd]), is_training=True, rate=0.1)
        lowering = mtf.Lowering(mesh.graph, {mesh: mesh_impl})
        outputs = [lowering.export_to_tf_tensor(x) for x in (split, replicated)]
        with tf.Session(config=tf.ConfigProto(device_count={"CPU": 2})) as session:
            (split_3, replicated_3), again = (session.run(outputs, {step: 3}) for _ in range(2))
            split_4, _ = session.run(outputs, {step: 4})
    assert np.array_equal(split_3, again[0]) and not np.array_equal(split_3, split_4)
    assert set(np.unique(split_3)) == {0, np.float32(1 / 0.9)}
    assert np.mean(split_3 > 0) == pytest.approx(0.9, abs=0.01)
    assert not np.array_equal(split_3[:32], split_3[32:])  # the two devices' halves differ
    assert (replicated_3 == replicated_3[0]).all()


def test_unknown_random_function_is_an_error():
    config = make(n_ctx=16)
    mesh_impl, _ = mesh_implementation(Hardware("cpu", ("/cpu:0",)), config.mesh, {}, 1, tf.constant(0, tf.int64))
    with pytest.raises(ValueError, match="gamma"):
        mesh_impl.random(mtf.Shape([mtf.Dimension("embd", 4)]), tf.random.gamma, {})

"""Learning-rate schedule formulas (spec 7.2), the optimizers' slot variables and the fused Adam step."""
import json
import math

import numpy as np
import pytest
from conftest import run_main, scalars

from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.trainer.config import TrainConfig
from gpt_neo_mtf.trainer.optimizer import AdamWeightDecay, learning_rate, minimize


def schedule(step, **keys):
    config = TrainConfig(train_batch_size=1, train_steps=100, lr=1.0, opt_name="adam", iterations=1, **keys)
    with tf.Graph().as_default(), tf.Session() as session:
        return session.run(learning_rate(config, tf.constant(step, tf.int64)))


@pytest.mark.parametrize("step", [0, 10, 50, 100, 150])
def test_cosine_and_linear_decay_to_ten_percent(step):
    s = min(step, 100) / 100
    assert schedule(step, lr_decay="cosine") == pytest.approx(0.9 * 0.5 * (1 + math.cos(math.pi * s)) + 0.1)
    assert schedule(step, lr_decay="linear") == pytest.approx(0.9 * (1 - s) + 0.1)
    assert schedule(step) == 1.0


def test_warmup_multiplies_the_decayed_rate_and_decay_end_is_honoured():
    decayed = 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 50)) + 0.1
    assert schedule(5, lr_decay="cosine", lr_decay_end=50, warmup_steps=10) == pytest.approx(decayed * 0.5)
    assert schedule(0, lr_decay="cosine", warmup_steps=10) == 0.0
    assert schedule(60, lr_decay="cosine", lr_decay_end=50) == pytest.approx(0.1)


def test_weight_decay_skips_norms_and_biases_only():
    adam = AdamWeightDecay(None, 0.1, 0.9, 0.95, 1e-8)
    assert not adam.decays("gpt2/h0/norm_1/g")
    assert not adam.decays("gpt2/h0/attn/compute_output_bias/o_b")
    assert not adam.decays("gpt2/h0/mlp/conv1d_main/c_fc/bias")
    # As the original: ln_f, embeddings and all kernels are decayed.
    for name in ("gpt2/ln_f/g", "gpt2/wte", "gpt2/wpe", "gpt2/h0/attn/q", "gpt2/h0/mlp/conv1d_main/c_proj/kernel"):
        assert adam.decays(name)
    assert not AdamWeightDecay(None, 0.0, 0.9, 0.95, 1e-8).decays("gpt2/wte")


def test_adafactor_trains_with_factored_slots(make_config):
    # Adafactor scales updates by the weights' RMS, so it wants a larger rate than Adam.
    path = make_config("adafactor", opt_name="adafactor", weight_decay=0, train_steps=10, lr=0.05)
    assert run_main("--model", path) == 0
    model_path = json.load(open(path))["model_path"]
    names = dict(tf.train.list_variables(tf.train.latest_checkpoint(model_path)))
    # wte [50257, 32]: its two largest dims are not both >= 128, so its second moment is not factored.
    assert "gpt2/wte_slot_v" in names and "gpt2/h0/mlp/conv1d_main/c_fc/kernel_slot_v" in names
    assert not any("adam" in n for n in names)
    losses = scalars(model_path, "loss")
    assert sorted(losses) == list(range(1, 11)) and losses[10] < losses[1]
    assert sorted(scalars(model_path, "lr")) == list(range(1, 11))
    assert sorted(scalars(model_path, "tokens_per_sec")) == [5, 10]


def adam_steps(fused, mesh_shape, layout, applies=1.0, steps=2):
    """Two Adam steps of minimize() on a kernel (decayed) and a norm gain (not), with fixed gradients;
    the weights and slots after them, by name."""
    train = TrainConfig(train_batch_size=1, train_steps=10, lr=0.01, opt_name="adam", iterations=1, weight_decay=0.1,
                        gradient_clipping=1.0)
    rng = np.random.RandomState(0)
    embd, hidden = mtf.Dimension("embd", 6), mtf.Dimension("mlp", 4)
    values = {"h0/mlp/kernel": rng.normal(size=(6, 4)), "h0/norm_1/g": rng.normal(size=(6,))}
    grads = {"h0/mlp/kernel": rng.normal(size=(6, 4)), "h0/norm_1/g": rng.normal(size=(6,))}
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        shapes = {"h0/mlp/kernel": [embd, hidden], "h0/norm_1/g": [embd]}
        variables = [mtf.get_variable(mesh, name, shapes[name], initializer=tf.constant_initializer(values[name]))
                     .operation for name in sorted(values)]
        g = [mtf.import_fully_replicated(mesh, tf.constant(grads[v.name], tf.float32), v.outputs[0].shape)
             for v in variables]
        skip = mtf.import_fully_replicated(mesh, tf.constant(applies, tf.float32), mtf.Shape([]))
        updates, _, _ = minimize(g, variables, train, tf.constant(1, tf.int64), skip, fused)
        shape = mtf.convert_to_shape(mesh_shape)
        impl = mtf.placement_mesh_impl.PlacementMeshImpl(shape, mtf.convert_to_layout_rules(layout),
                                                         ["/cpu:%d" % i for i in range(shape.size)])
        lowering = mtf.Lowering(graph, {mesh: impl}, autostack=not fused)
        step = tf.group([lowering.lowered_operation(op) for op in updates])
        with tf.Session(config=tf.ConfigProto(device_count={"CPU": 2})) as session:
            session.run(tf.global_variables_initializer())
            session.run(lowering.copy_masters_to_slices())
            for _ in range(steps):
                session.run(step)
            session.run(lowering.copy_slices_to_masters())
            return {v.op.name: session.run(v) for v in tf.global_variables()}, values, grads


def test_the_fused_adam_step_is_adam_with_decoupled_weight_decay_on_every_mesh():
    """w -= lr · (m / (sqrt(v) + eps) + wd · w) with m, v the moving averages of the clipped gradient and no
    bias correction, norms undecayed: as mtf's elementwise ops compute it, on one device and split over two."""
    expected, values, grads = {}, None, None
    for fused, mesh_shape, layout in ((False, "x:1", ""), (True, "x:1", ""), (True, "x:2", "mlp:x")):
        got, values, grads = adam_steps(fused, mesh_shape, layout)
        expected = expected or got
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)  # a few float32 ulps
    norm = math.sqrt(sum((g ** 2).sum() for g in grads.values()))
    for name in values:
        w, m, v = values[name], 0.0, 0.0
        g = grads[name] / max(norm, 1.0)
        for _ in range(2):
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g ** 2
            w = w - 0.01 * (m / (np.sqrt(v) + 1e-8) + (0.1 * w if "kernel" in name else 0.0))
        np.testing.assert_allclose(expected[name], w, rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(expected[name + "/adam_m"], m, rtol=1e-5)


def test_a_skipped_fused_adam_step_leaves_weights_and_slots_as_they_were():
    got, values, _ = adam_steps(True, "x:2", "mlp:x", applies=0.0)
    for name, value in values.items():
        np.testing.assert_array_equal(got[name], value.astype(np.float32))
        assert not got[name + "/adam_m"].any() and not got[name + "/adam_v"].any()

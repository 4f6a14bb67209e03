"""The original's experimental block features: the activation registry, scalenorm, ReZero, macaron
blocks, GLU, shared parameters, an untied output projection, the entmax loss and mixture of experts.
Values against the numpy reference, an experts layout on 8 devices against 1, incremental decoding
against the full forward pass, and training runs of the real main.py that save, reload and continue."""
import json

import numpy as np
import pytest
from conftest import BASE, TINY, make, placement, randomize_and_run, run_main, scalars
from reference_models import (ACTIVATION_NAMES, NUMPY_ACTIVATION_PARAMS, numpy_activation, numpy_entmax,
                              numpy_entmax_loss, numpy_gpt_neo_logits, numpy_token_losses)
from test_model import lowered
from test_sampling import full_logits, stepped_logits

from gpt_neo_mtf.convert.huggingface import ConversionError, export_hf, write_checkpoint
from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models import dims as names
from gpt_neo_mtf.models.activations import ACTIVATIONS, activation
from gpt_neo_mtf.models.attention import GLOBAL_MASK_VALUE
from gpt_neo_mtf.models.context import Context
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.models.entmax import entmax_loss
from gpt_neo_mtf.models.gpt import gpt, token_losses
from gpt_neo_mtf.models.layers import normalized, softmax
from gpt_neo_mtf.trainer import hardware
from gpt_neo_mtf.trainer.config import ConfigError

# Model level: conftest.BASE (2 layers, n_embd 16, 4 heads, vocab 64), 16 positions, window 4.
SMALL = dict(n_ctx=16, local_attention_radius=4)


def import_array(mesh, array, dims):
    return mtf.import_fully_replicated(mesh, tf.constant(array, tf.float32), mtf.Shape(dims))


# ---------------------------------------------------------------------------------------------
# Activations


@pytest.fixture(scope="module")
def activation_values():
    """x [4, 16], the learned scalars by name (random values), and per activation act(x) and the
    gradients of sum(act(x)) for x and for its scalars, from one graph."""
    x = np.random.RandomState(0).normal(0, 2, size=(4, 16))
    x[0, :3] = [0.0, 30.0, -30.0]
    # The batch laid out (on one device): the scalars' gradients are then sums over a split dimension.
    config = make("x:1", "batch:x", **SMALL)
    ctx = Context(Dims.build(config.model, 4), config.model, train=False, seed=1)
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        inputs = import_array(mesh, x, [mtf.Dimension(names.BATCH, 4), mtf.Dimension(names.INTERMEDIATE_EXPANDED, 16)])
        fetches = {}
        for name in ACTIVATIONS:
            with tf.variable_scope(name):
                y = activation(name, inputs, ctx)
            learned = sorted((v for v in graph.trainable_variables if v.name.startswith(name + "/")),
                             key=lambda v: v.name)
            grads = mtf.gradients([mtf.reduce_sum(y)], [inputs] + [v.outputs[0] for v in learned])
            fetches[name] = [y, grads[0], grads[1:]]
        lowering = mtf.Lowering(graph, {mesh: placement(config, 1)})
        weights, values = randomize_and_run(lowering, {
            name: [lowering.export_to_tf_tensor(y), lowering.export_to_tf_tensor(grad),
                   [lowering.export_to_tf_tensor(g) for g in grads]] for name, (y, grad, grads) in fetches.items()})
    return x, weights, values


def test_the_numpy_reference_knows_every_activation():
    assert sorted(ACTIVATIONS) == sorted(ACTIVATION_NAMES)


def numerical_gradient(f, x, step=1e-6):
    """d f(x) / dx by central differences (float64)."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        delta = np.zeros_like(x)
        delta[index] = step
        grad[index] = (f(x + delta) - f(x - delta)) / (2 * step)
    return grad


@pytest.mark.parametrize("name", sorted(ACTIVATION_NAMES))
def test_activation_and_its_gradient_equal_numpy(activation_values, name):
    x, weights, values = activation_values
    learned = ["%s/activation-%d" % (name, k) for k in range(NUMPY_ACTIVATION_PARAMS.get(name, 0))]
    assert sorted(w for w in weights if w.startswith(name + "/")) == learned  # stable names, creation order
    params = np.array([weights[w] for w in learned], np.float64)
    ours, our_grad, our_param_grads = values[name]
    np.testing.assert_allclose(ours, numpy_activation(name, x, params, seed=1), rtol=1e-4, atol=1e-5)
    kinks = x == 0  # relu, abs, sign, prelu, ... have no derivative at 0
    expected = numerical_gradient(lambda x: numpy_activation(name, x, params).sum(), x)
    np.testing.assert_allclose(our_grad[~kinks], expected[~kinks], rtol=2e-3, atol=1e-4)
    assert np.isfinite(our_grad).all()
    expected = numerical_gradient(lambda p: numpy_activation(name, x, p).sum(), params)
    np.testing.assert_allclose(our_param_grads, expected, rtol=2e-3, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# The model against the numpy reference

MOE = {"moe_num_experts": 4, "moe_hidden_size": 8}
FEATURES = {
    "macaron-glu-scalenorm": dict(macaron=True, mlp_glu=True, scalenorm=True, activation_fn="aria"),
    "rezero-shared-untied-entmax": dict(rezero=True, share_parameters=True, no_weight_tie=True, entmax_loss=True,
                                        activation_fn="prelu"),
    # Groups of 8 tokens, 2 slots per expert and group: tokens overflow; second experts above a gate of 0.2.
    "experts-capacity": dict(moe_layers=[1], moe_params=dict(MOE, moe_group_size=8, moe_capacity_factor_eval=1.0,
                                                             moe_second_policy_eval="threshold")),
    "experts-every-layer": dict(moe_layers=[0, 1], moe_activation="gelu",
                                moe_params=dict(MOE, moe_second_policy_eval="all", moe_loss_coef=0.1)),
}


@pytest.mark.parametrize("features", FEATURES.values(), ids=FEATURES.keys())
def test_logits_and_loss_equal_numpy_reference(features):
    config = make(**SMALL, **features)
    rng = np.random.RandomState(1)
    ids, labels = rng.randint(0, 64, size=(2, 16)), rng.randint(0, 64, size=(2, 16))
    with tf.Graph().as_default():
        lowering, logits, loss, _ = lowered(config, ids, labels, placement(config, 1))
        weights, (ours, our_loss) = randomize_and_run(lowering, (logits, loss))
    balance = []
    expected = numpy_gpt_neo_logits(weights, dict(BASE, **SMALL, **features), ids, balance)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-4)
    if features.get("entmax_loss"):
        token_loss = numpy_entmax_loss(expected, labels)
    else:
        token_loss = numpy_token_losses(expected, labels, config.model.z_loss)[1]
    assert len(balance) == len(features.get("moe_layers", []))
    assert our_loss == pytest.approx(token_loss.mean() + sum(balance), rel=1e-5)


def meshes_splitting(dim):
    """(mesh_shape, layout, dtype) of a per-slice op's tests: one device in float32 and in bfloat16, `dim`
    split over 2 devices (each holds half), and over 2 of 2 × 2 devices with the batch split over the others."""
    return [("x:1", "", tf.float32), ("x:1", "", tf.bfloat16), ("x:2", "%s:x" % dim, tf.float32),
            ("x:2,y:2", "batch:x,%s:y" % dim, tf.float32)]


@pytest.mark.parametrize("mesh_shape,layout,dtype", meshes_splitting("vocab"))
def test_token_losses_and_z_loss_and_their_gradient_equal_numpy(mesh_shape, layout, dtype):
    """ℓ = logZ − z_target + z_loss·logZ² per token; a label outside [0, n_vocab) keeps only the z-loss
    term; d mean(ℓ) / d logits = (softmax · (1 + 2 z_loss logZ) − one_hot) / tokens, in the logits' dtype."""
    config = make(**SMALL, z_loss=0.1, mesh_shape=mesh_shape, layout=layout)
    rng = np.random.RandomState(4)
    logits = rng.normal(0, 3, size=(2, 16, 64))
    labels = rng.randint(0, 64, size=(2, 16))
    labels[1, 3] = 64
    labels[0, 5] = -1
    if dtype == tf.bfloat16:  # the values the bfloat16 logits hold
        logits = tf.Session().run(tf.cast(tf.cast(logits, tf.bfloat16), tf.float64))
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, 2)
        z = mtf.cast(import_array(mesh, logits, [d.batch, d.sequence, d.vocab]), dtype)
        y = mtf.import_fully_replicated(mesh, tf.constant(labels, tf.int32), mtf.Shape([d.batch, d.sequence]))
        loss, cross_entropy = token_losses(z, y, d, 0.1)
        grad = mtf.gradients([loss], [z])[0]
        assert grad.dtype == dtype
        grad = mtf.cast(grad, tf.float32)
        lowering = mtf.Lowering(graph, {mesh: placement(config, config.mesh.size)})
        with tf.Session(config=tf.ConfigProto(device_count={"CPU": config.mesh.size})) as session:
            loss, cross_entropy, grad = session.run([lowering.export_to_tf_tensor(t)
                                                     for t in (loss, cross_entropy, grad)])
    expected_cross_entropy, expected = numpy_token_losses(logits, labels, 0.1)
    np.testing.assert_allclose(cross_entropy, expected_cross_entropy, rtol=1e-5)
    assert loss == pytest.approx(expected.mean(), rel=1e-5)
    log_z = expected_cross_entropy + np.where(labels == 64, 0, np.take_along_axis(
        logits, np.clip(labels, 0, 63)[..., None], -1)[..., 0]) * (labels >= 0)
    softmax = np.exp(logits - log_z[..., None])
    one_hot = np.eye(65)[np.where(labels < 0, 64, labels)][..., :64]
    expected_grad = (softmax * (1 + 0.2 * log_z)[..., None] - one_hot) / labels.size
    tolerance = 1e-2 if dtype == tf.bfloat16 else 1e-5
    np.testing.assert_allclose(grad, expected_grad, rtol=tolerance, atol=tolerance * np.abs(expected_grad).max())


def value_and_gradient(op, x, r, dims, config, dtype):
    """(op(x), d Σ op(x)·r / dx) as float32 arrays, x and r [dims] arrays, x cast to `dtype` on config's mesh;
    and x as `dtype` holds it (float64)."""
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, 2)
        shape = [getattr(d, name) for name in dims]
        inputs = mtf.cast(import_array(mesh, x, shape), dtype)
        y = op(inputs, d)
        grad = mtf.gradients([mtf.reduce_sum(mtf.cast(y, tf.float32) * import_array(mesh, r, shape))], [inputs])[0]
        assert y.dtype == grad.dtype == dtype
        y, grad = (mtf.cast(t, tf.float32) for t in (y, grad))
        lowering = mtf.Lowering(graph, {mesh: placement(config, config.mesh.size)})
        with tf.Session(config=tf.ConfigProto(device_count={"CPU": config.mesh.size})) as session:
            y, grad, held = session.run([lowering.export_to_tf_tensor(y), lowering.export_to_tf_tensor(grad),
                                         tf.cast(tf.cast(x, dtype), tf.float64)])
    return y, grad, held


@pytest.mark.parametrize("mesh_shape,layout,dtype", meshes_splitting("memory_length"))
def test_softmax_and_its_gradient_equal_numpy(mesh_shape, layout, dtype):
    """w = softmax(x) over memory_length, masked keys (-1e10) included; d Σ w·r / dx = w · (r − Σ w·r)."""
    rng = np.random.RandomState(6)
    x = rng.normal(0, 5, size=(2, 4, 16, 16)) + GLOBAL_MASK_VALUE * (1 - np.tri(16))  # query p sees keys up to p
    r = rng.normal(size=x.shape)
    config = make(**SMALL, mesh_shape=mesh_shape, layout=layout)
    w, grad, x = value_and_gradient(lambda x, d: softmax(x, d.memory_length), x, r,
                                    ["batch", "heads", "sequence", "memory_length"], config, dtype)
    e = np.exp(x - x.max(-1, keepdims=True))
    expected = e / e.sum(-1, keepdims=True)
    expected_grad = expected * (r - (expected * r).sum(-1, keepdims=True))
    tolerance = 1e-2 if dtype == tf.bfloat16 else 1e-5
    np.testing.assert_allclose(w, expected, rtol=tolerance, atol=tolerance * 1e-2)
    np.testing.assert_allclose(grad, expected_grad, rtol=10 * tolerance, atol=tolerance * np.abs(expected_grad).max())


@pytest.mark.parametrize("mesh_shape,layout,dtype", meshes_splitting("embd"))
def test_normalized_and_its_gradient_equal_numpy(mesh_shape, layout, dtype):
    """y = (x − mean) / sqrt(var + 1e-5) over embd; d Σ y·r / dx = (r − mean(r) − y·mean(r·y)) / sqrt(var + 1e-5)."""
    rng = np.random.RandomState(7)
    x = rng.normal(3, 2, size=(2, 16, 16))
    x[0, 0] = 5.0  # no variance: only the epsilon keeps y finite
    r = rng.normal(size=x.shape)
    config = make(**SMALL, mesh_shape=mesh_shape, layout=layout)
    y, grad, x = value_and_gradient(lambda x, d: normalized(x, d.embd), x, r, ["batch", "sequence", "embd"],
                                    config, dtype)
    rstd = 1 / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    expected = (x - x.mean(-1, keepdims=True)) * rstd
    expected_grad = rstd * (r - r.mean(-1, keepdims=True) - expected * (r * expected).mean(-1, keepdims=True))
    tolerance = 1e-2 if dtype == tf.bfloat16 else 1e-5
    np.testing.assert_allclose(y, expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(grad, expected_grad, rtol=tolerance, atol=tolerance * np.abs(expected_grad).max())


def bfloat16_values(array):
    """The float64 values `array` holds as bfloat16 (round to nearest even)."""
    with tf.Graph().as_default(), tf.Session() as session:
        return session.run(tf.cast(tf.cast(array, tf.bfloat16), tf.float64))


@pytest.mark.parametrize("mesh_shape,layout", [("x:1", ""), ("x:2", "embd:x"), ("x:2", "intermediate_expanded:x"),
                                               ("x:2", "batch:x")])
def test_bfloat16_einsums_in_float32_round_once_as_a_bfloat16_gemm_does(mesh_shape, layout):
    """hardware.PlacementMeshImpl(bfloat16_in_float32), for CPUs whose TF multiplies bfloat16 slowly:
    y = x·w of bfloat16 x [batch, sequence, embd] and w [embd, intermediate] is the product of the values
    they hold rounded once to bfloat16, and so are dx = dy·wᵀ and dw = xᵀ·dy; no matmul in the graph
    takes bfloat16. Over a split dimension each device's partial sum is rounded before the all-reduce."""
    config = make(**SMALL, mesh_shape=mesh_shape, layout=layout)
    d = Dims.build(config.model, 2)
    rng = np.random.RandomState(8)
    x_dims, w_dims, y_dims = [d.batch, d.sequence, d.embd], [d.embd, d.intermediate], [d.batch, d.sequence,
                                                                                      d.intermediate]
    x, w, r = (rng.normal(size=[dim.size for dim in dims]) for dims in (x_dims, w_dims, y_dims))
    with tf.Graph().as_default() as tf_graph:
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        inputs = [mtf.cast(import_array(mesh, a, dims), tf.bfloat16) for a, dims in ((x, x_dims), (w, w_dims))]
        y = mtf.einsum(inputs, mtf.Shape(y_dims))
        grads = mtf.gradients([mtf.reduce_sum(mtf.cast(y, tf.float32) * import_array(mesh, r, y_dims))], inputs)
        outputs = [mtf.cast(t, tf.float32) for t in [y] + grads]
        impl = hardware.PlacementMeshImpl(mtf.convert_to_shape(mesh_shape), mtf.convert_to_layout_rules(layout),
                                          ["/cpu:%d" % i for i in range(config.mesh.size)], seed=1,
                                          step=tf.constant(0), bfloat16_in_float32=True)
        lowering = mtf.Lowering(graph, {mesh: impl})
        with tf.Session(config=tf.ConfigProto(device_count={"CPU": config.mesh.size})) as session:
            y, dx, dw = session.run([lowering.export_to_tf_tensor(t) for t in outputs])
    matmul_types = {op.get_attr("T") for op in tf_graph.get_operations()
                    if op.type in ("Einsum", "MatMul", "BatchMatMulV2")}
    assert matmul_types == {tf.float32}
    x, w, dy = bfloat16_values(x), bfloat16_values(w), bfloat16_values(r)
    one_rounding = 2.0 ** -8  # half of bfloat16's spacing, relative
    split = layout.partition(":")[0]
    for got, exact, reduced in ((y, np.einsum("bse,ei->bsi", x, w), "embd"),
                                (dx, np.einsum("bsi,ei->bse", dy, w), "intermediate_expanded"),
                                (dw, np.einsum("bse,bsi->ei", x, dy), "batch")):
        if split == reduced:  # the partial sums are rounded too
            np.testing.assert_allclose(got, exact, rtol=0, atol=3 * one_rounding * np.abs(exact).max())
        else:
            np.testing.assert_allclose(got, exact, rtol=one_rounding, atol=0)


def test_entmax_loss_is_finite_where_the_target_has_probability_zero_and_its_gradient_is_p_minus_target():
    rng = np.random.RandomState(5)
    logits = rng.normal(0, 4, size=(3, 50))
    labels = np.array([0, 1, 2])
    p = numpy_entmax(logits)
    assert np.allclose(p.sum(-1), 1) and (p == 0).any(axis=-1).all()
    logits[:, :3] = logits.min()  # every target gets probability 0: −log p would be infinite
    config = make(**SMALL)
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        rows, vocab = mtf.Dimension(names.BATCH, 3), mtf.Dimension(names.VOCAB, 50)
        z = import_array(mesh, logits, [rows, vocab])
        y = mtf.import_fully_replicated(mesh, tf.constant(labels, tf.int32), mtf.Shape([rows]))
        loss = entmax_loss(z, y, vocab)
        grad = mtf.gradients([mtf.reduce_sum(loss)], [z])[0]
        lowering = mtf.Lowering(graph, {mesh: placement(config, 1)})
        with tf.Session() as session:
            loss, grad = session.run([lowering.export_to_tf_tensor(t) for t in (loss, grad)])
    np.testing.assert_allclose(loss, numpy_entmax_loss(logits, labels), rtol=1e-5)
    assert (loss > 0).all()
    np.testing.assert_allclose(grad, numpy_entmax(logits) - np.eye(50)[labels], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Experts across meshes, and decoding


ONE_LAYER = dict(n_layer=1, attention_types=[[["global"], 1]])
ON_EIGHT_DEVICES = {
    # Groups split over x, experts over y: tokens go from their group's device to their experts' and back.
    "experts": ("batch:x,experts:y,heads:y", dict(moe_layers=[0], moe_params=dict(
        MOE, moe_group_size=8, moe_capacity_factor_eval=1.0, moe_second_policy_eval="threshold"))),
    # GLU's c_fc halves are cut from its weights, gathered over y.
    "glu": ("batch:x,intermediate_expanded:y", dict(mlp_glu=True)),
}


@pytest.mark.parametrize("layout,features", ON_EIGHT_DEVICES.values(), ids=ON_EIGHT_DEVICES.keys())
def test_layout_on_eight_devices_gives_the_loss_and_gradients_of_one(layout, features):
    rng = np.random.RandomState(2)
    ids, labels = rng.randint(0, 64, size=(8, 16)), rng.randint(0, 64, size=(8, 16))
    results = []
    for shape, rules, devices in (("x:1", "", 1), ("x:2,y:4", layout, 8)):
        config = make(shape, rules, **SMALL, **ONE_LAYER, train_batch_size=8, **features)
        with tf.Graph().as_default():
            lowering, _, loss, grads = lowered(config, ids, labels, placement(config, devices))
            results.append(randomize_and_run(lowering, (loss, grads), devices=devices)[1])
    (loss_1, grads_1), (loss_8, grads_8) = results
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    assert grads_1.keys() == grads_8.keys()
    for name in grads_1:
        scale = np.abs(grads_1[name]).max()
        assert np.abs(grads_8[name] - grads_1[name]).max() <= 1e-5 * max(scale, 1e-3), name


DECODED = {
    "macaron-glu-scalenorm": dict(macaron=True, mlp_glu=True, scalenorm=True, activation_fn="psoftplus"),
    # Capacity for every token, so routing is per token in the full pass as in a decoding step.
    "experts": dict(moe_layers=[0], mlp_glu=True, macaron=True,
                    moe_params=dict(MOE, moe_capacity_factor_eval=4.0, moe_second_policy_eval="threshold")),
    "rezero-shared-untied": dict(rezero=True, share_parameters=True, no_weight_tie=True),
}


@pytest.mark.parametrize("features", DECODED.values(), ids=DECODED.keys())
def test_incremental_decoding_equals_full_forward(features):
    """Five prompt positions prefilled in one pass, the rest one token per step (test_sampling's helpers)."""
    config = make(**SMALL, attention_types=[[["global", "local"], 1]], **features)
    ids = np.random.RandomState(3).randint(0, 64, size=(2, 16))
    weights, expected = full_logits(config, ids)
    np.testing.assert_allclose(stepped_logits(config, ids, 6, weights), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("depth,fan_in", [(True, False), (False, True), (True, True)])
def test_scale_by_depth_and_in_scale_the_mlp_and_output_initialisers(depth, fan_in):
    """std 0.02, times 1/sqrt(n_layer) for c_proj with scale_by_depth and 1/sqrt(fan_in) with scale_by_in
    (also for GLU's wider c_fc, the macaron MLP and the untied output); attention keeps its own."""
    config = make(n_embd=32, n_layer=4, attention_types=[[["global"], 4]], **SMALL, mlp_glu=True, macaron=True,
                  no_weight_tie=True, scale_by_depth=depth, scale_by_in=fan_in)
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, 1)
        gpt(mtf.zeros(mesh, mtf.Shape([d.batch, d.sequence]), tf.int32), Context(d, config.model, train=False, seed=1))
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            values = {v.op.name: session.run(v) for v in tf.global_variables()}
    depth_factor, fc_in, proj_in = 4 ** -0.5 if depth else 1, 32 ** -0.5 if fan_in else 1, 128 ** -0.5 if fan_in else 1
    for name, std in (("gpt2/h1/mlp/conv1d_main/c_fc/kernel", 0.02 * fc_in),
                      ("gpt2/h1/mlp_macaron/conv1d_main/c_fc/kernel", 0.02 * fc_in),
                      ("gpt2/h1/mlp/conv1d_main/c_proj/kernel", 0.02 * depth_factor * proj_in),
                      ("gpt2/h2/mlp_macaron/conv1d_main/c_proj/kernel", 0.02 * depth_factor * proj_in),
                      ("gpt2/wte_final_linear/conv1d_main/linear_out/kernel", 0.02 * fc_in),
                      ("gpt2/h0/attn/k", 32 ** -0.5)):
        assert values[name].std() == pytest.approx(std, rel=0.06), name


def test_huggingface_export_refuses_block_features(tmp_path):
    with pytest.raises(ConversionError, match=r"^macaron, mlp_glu, moe_layers: no HuggingFace GPT-Neo equivalent"):
        export_hf(str(tmp_path), make(**SMALL, macaron=True, mlp_glu=True, moe_layers=[0]), str(tmp_path / "hf"))


# ---------------------------------------------------------------------------------------------
# Configs


@pytest.mark.parametrize("overrides, message", [
    ({"activation_fn": "swishh"}, r"^`activation_fn` 'swishh' is not an activation; did you mean 'silu'|"
                                  r"^`activation_fn` 'swishh' is not an activation"),
    ({"moe_layers": [2]}, r"^`moe_layers` lists layer\(s\) 2, but the layers are numbered 0 to 1"),
    ({"moe_layers": [1], "moe_params": {"moe_num_expert": 4}},
     r"^unknown `moe_params` key `moe_num_expert`; did you mean 'moe_num_experts'\?"),
    ({"moe_layers": [1], "moe_params": {"moe_num_experts": "4"}},
     r"^moe_params key `moe_num_experts` must be an integer"),
    ({"moe_layers": [1], "moe_params": {"moe_second_policy_train": "sometimes"}},
     r"^`moe_params` moe_second_policy_train must be one of all, none, threshold, random"),
    ({"moe_layers": [1], "moe_params": {"moe_gating": "switch"}}, r"^`moe_params` moe_gating must be \"top_2\""),
    ({"rezero": True, "scalenorm": True}, r"^`rezero` and `scalenorm` are both set"),
    ({"moe_layers": [1], "moe_params": {"moe_num_experts": 6}, "mesh_shape": "x:4", "layout": "experts:x"},
     r"^`layout` splits 'experts' \(size 6\) over mesh dimension 'x' of size 4"),
], ids=["activation", "moe_layers", "moe_params-key", "moe_params-type", "policy", "gating", "rezero-scalenorm",
        "experts-layout"])
def test_bad_block_feature_values_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make(**dict(SMALL, **overrides))


# ---------------------------------------------------------------------------------------------
# Training runs of main.py

TRAINED = {
    "macaron-glu-scalenorm-aria-experts": (
        dict(macaron=True, mlp_glu=True, scalenorm=True, activation_fn="aria", moe_layers=[1],
             moe_params={"moe_num_experts": 4, "moe_hidden_size": 64}),
        {"gpt2/h0/mlp/activation-5": [], "gpt2/h1/mlp_macaron/conv1d_main/c_fc/kernel": [32, 256],
         "gpt2/h0/mlp/conv1d_main/c_proj/kernel": [128, 32], "gpt2/h0/norm_1/g": [],
         "gpt2/h1/top_2_gating/kernel": [32, 4], "gpt2/h1/wi/kernel": [4, 32, 64], "gpt2/h1/wo/kernel": [4, 64, 32]}),
    "rezero-shared-untied-entmax-prelu": (
        dict(rezero=True, share_parameters=True, no_weight_tie=True, entmax_loss=True, activation_fn="prelu",
             train_batch_size=2),
        {"gpt2//norm_rezero_1/g": [], "gpt2//mlp/activation-0": [], "gpt2//attn/q": [32, 32],
         "gpt2/wte_final_linear/conv1d_main/linear_out/kernel": [32, 50257],
         "gpt2/wte_final_linear/conv1d_main/linear_out/bias": [50257], "gpt2/ln_f/g": None}),
}


@pytest.mark.parametrize("name", TRAINED)
def test_trains_saves_reloads_and_continues(make_config, name):
    features, variables = TRAINED[name]
    settings = dict(features, iterations=2, lr=0.01, lr_decay_end=6)
    assert run_main("--model", make_config(name, train_steps=4, **settings)) == 0
    path = make_config(name, train_steps=6, **settings)  # the same model_path, on to step 6
    assert run_main("--model", path) == 0

    model_path = json.load(open(path))["model_path"]
    losses = scalars(model_path, "loss")
    assert sorted(losses) == list(range(1, 7)) and np.isfinite(list(losses.values())).all()
    first, second, resumed = (np.mean([losses[s] for s in steps]) for steps in ((1, 2), (3, 4), (5, 6)))
    assert second < first and resumed < second, losses  # resumed from the trained weights, not from scratch
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_path))
    assert reader.get_tensor("global_step") == 6
    shapes = reader.get_variable_to_shape_map()
    assert {v: shapes.get(v) for v in variables} == variables


def original_untied_weights(rng, n_embd=32, n_layer=2, n_ctx=32, n_vocab=50257):
    """Random weights under the variable names of the original's no_weight_tie model (spec 4.2): its
    embeddings and blocks as always, the output projection `wte_final_linear`, and no `ln_f`."""
    E, F = n_embd, 4 * n_embd
    shapes = {"gpt2/wte": (n_vocab, E), "gpt2/wpe": (n_ctx, E),
              "gpt2/wte_final_linear/conv1d_main/linear_out/kernel": (E, n_vocab),
              "gpt2/wte_final_linear/conv1d_main/linear_out/bias": (n_vocab,)}
    for i in range(n_layer):
        p = "gpt2/h%d/" % i
        shapes.update({p + "norm_1/g": (E,), p + "norm_1/b": (E,), p + "norm_2/g": (E,), p + "norm_2/b": (E,),
                       p + "attn/q": (E, E), p + "attn/k": (E, E), p + "attn/v": (E, E), p + "attn/o": (E, E),
                       p + "attn/compute_output_bias/o_b": (E,),
                       p + "mlp/conv1d_main/c_fc/kernel": (E, F), p + "mlp/conv1d_main/c_fc/bias": (F,),
                       p + "mlp/conv1d_main/c_proj/kernel": (F, E), p + "mlp/conv1d_main/c_proj/bias": (E,)})
    return {name: (rng.normal(0, 0.1, shape) + name.endswith("/g")).astype(np.float32)
            for name, shape in sorted(shapes.items())}


def test_original_untied_checkpoint_predicts_what_it_computed_and_trains_on(make_config, tmp_path):
    """A checkpoint of the original's no_weight_tie model (no ln_f) through main.py: --predict decodes
    what the numpy reference computes from it (logits of the unnormalised residual stream), training
    goes on from it; HuggingFace export, whose GPT-Neo has ln_f and a tied output, refuses the model."""
    path = make_config("untied", no_weight_tie=True, temperature=0, predict_max_steps=4, train_steps=2, iterations=2)
    model_path = json.load(open(path))["model_path"]
    weights = original_untied_weights(np.random.RandomState(0))
    write_checkpoint(model_path + "/model.ckpt", weights.items(), global_step=0)

    prompt_file = tmp_path / "p.jsonl"
    prompt_file.write_text('{"prompt": "Lists are"}\n')
    assert run_main("--model", path, "--predict", "--prompt", str(prompt_file), "--output", str(tmp_path / "s")) == 0
    [sample] = [json.loads(line) for line in open(str(tmp_path / "s") + ".jsonl")]
    tokens = list(sample["prompt_tokens"])
    for _ in range(4):
        logits = numpy_gpt_neo_logits(weights, dict(TINY, no_weight_tie=True), np.array([tokens]))
        tokens.append(int(logits[0, -1].argmax()))
    assert sample["tokens"] == tokens[len(sample["prompt_tokens"]):]

    assert run_main("--model", path) == 0
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_path))
    assert reader.get_tensor("global_step") == 2
    assert [n for n in reader.get_variable_to_shape_map() if "ln_f" in n] == []
    kernel = "gpt2/wte_final_linear/conv1d_main/linear_out/kernel"
    assert 0 < np.abs(reader.get_tensor(kernel) - weights[kernel]).max() < 0.01  # two small Adam steps on

    with pytest.raises(ConversionError, match=r"^no_weight_tie: no HuggingFace GPT-Neo equivalent \(it always "
                                              r"applies the final LayerNorm ln_f and ties its output to wte"):
        export_hf(model_path, path, str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists()

"""Microbatched gradient accumulation, bfloat16 precision and recompute_grad against the plain float32 step."""
import json
import os

import numpy as np
import pytest
from conftest import make, placement, randomize_and_run, run_main, scalars
from test_model import tpu_training_step_ops

from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models.context import Context
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.models.gpt import gpt_losses
from gpt_neo_mtf.trainer.config import ConfigError, microbatches
from gpt_neo_mtf.trainer.optimizer import loss_and_gradients


def lowered_step(config, ids, devices):
    """Loss and {variable name: gradient} of a training step of `config` on a placement mesh."""
    graph = mtf.Graph()
    mesh = mtf.Mesh(graph, "mesh")
    d = Dims.build(config.model, ids.shape[0])
    shape = mtf.Shape([d.batch, d.sequence])
    tokens = mtf.import_fully_replicated(mesh, tf.constant(ids, tf.int32), shape)
    targets = mtf.import_fully_replicated(mesh, tf.constant(np.roll(ids, -1, axis=1), tf.int32), shape)

    def loss_fn(x, y):
        d = Dims.build(config.model, x.shape.dims[0].size)
        return gpt_losses(x, y, Context(d, config.model, train=True, seed=1))[0]

    loss, grads = loss_and_gradients(loss_fn, [tokens, targets], d.batch, microbatches(config))
    variables = graph.trainable_variables
    lowering = mtf.Lowering(graph, {mesh: placement(config, devices)})
    exported = {v.name: lowering.export_to_tf_tensor(g) for v, g in zip(variables, grads)}
    return lowering, (lowering.export_to_tf_tensor(loss), exported)


def step_results(config, ids, devices=1):
    with tf.Graph().as_default():
        lowering, fetches = lowered_step(config, ids, devices)
        return randomize_and_run(lowering, fetches, devices=devices)[1]


def assert_same_step(got, expected, rtol, variables=2 + 2 * 13 + 2):
    (loss, grads), (expected_loss, expected_grads) = got, expected
    np.testing.assert_allclose(loss, expected_loss, rtol=rtol)
    assert grads.keys() == expected_grads.keys() and len(grads) == variables
    for name in grads:
        scale = np.abs(expected_grads[name]).max()
        assert np.abs(grads[name] - expected_grads[name]).max() <= rtol * max(scale, 1e-3), name


# ---------------------------------------------------------------------------------------------
# Microbatches


@pytest.mark.parametrize("mesh_shape,layout,tokens,expected_microbatches", [
    ("x:1", "", 32, 4),              # 8 rows of 16 tokens, 2 rows per microbatch
    ("x:1", "", 16, 8),
    ("x:2", "batch:x", 16, 4),       # 4 rows per replica, 1 per microbatch
    ("x:2,y:2", "batch:x,heads:y", 32, 2),
])
def test_microbatched_loss_and_gradients_equal_the_whole_batch(mesh_shape, layout, tokens, expected_microbatches):
    ids = np.random.RandomState(3).randint(0, 64, size=(8, 16))
    common = dict(n_ctx=16, local_attention_radius=4, train_batch_size=8)
    whole = step_results(make(**common), ids)
    config = make(mesh_shape, layout, tokens_per_mb_per_replica=tokens, **common)
    assert microbatches(config) == expected_microbatches
    assert_same_step(step_results(config, ids, devices=config.mesh.size), whole, rtol=1e-5)


# Experts in both layers (3 variables each instead of the MLP's 4), their balancing loss weighted 1 (so about as
# large as the cross-entropy), second experts by threshold (the "random" policy draws by the microbatch's shape).
EXPERTS = dict(n_ctx=16, local_attention_radius=4, train_batch_size=8, moe_layers=[0, 1], moe_params={
    "moe_num_experts": 4, "moe_hidden_size": 8, "moe_loss_coef": 1.0, "moe_second_policy_train": "threshold"})


@pytest.fixture(scope="module")
def experts_whole_batch():
    """ids, and the whole batch's step with experts (loss, gradients) and loss without their balancing loss."""
    ids = np.random.RandomState(3).randint(0, 64, size=(8, 16))
    unbalanced = dict(EXPERTS, moe_params=dict(EXPERTS["moe_params"], moe_loss_coef=0.0))
    return ids, step_results(make(**EXPERTS), ids), step_results(make(**unbalanced), ids)[0]


@pytest.mark.parametrize("mesh_shape,layout,expected_microbatches", [("x:1", "", 4), ("x:2", "batch:x", 2)])
def test_microbatched_experts_loss_and_gradients_equal_the_whole_batch(experts_whole_batch, mesh_shape, layout,
                                                                       expected_microbatches):
    """The balancing loss, a mean over groups, counts once per step however many microbatches the step
    runs (the original divided it by their number twice, so its weight shrank as they grew)."""
    ids, whole, unbalanced_loss = experts_whole_batch
    # E² · mean(fraction routed first × mean gate) is 1 per layer when balanced: 2.2 for these two.
    assert whole[0] - unbalanced_loss > 2
    config = make(mesh_shape, layout, tokens_per_mb_per_replica=32, **EXPERTS)
    assert microbatches(config) == expected_microbatches
    assert_same_step(step_results(config, ids, devices=config.mesh.size), whole, rtol=1e-5, variables=2 + 2 * 12 + 2)


@pytest.mark.parametrize("tokens", [24, 48, 0])
def test_microbatch_size_must_be_whole_rows_dividing_a_replicas_batch(tokens):
    # 8 rows of 16 tokens over 2 replicas: 64 tokens per replica.
    with pytest.raises(ConfigError, match=r"^`tokens_per_mb_per_replica` \(%d\) must be a multiple of n_ctx \(16\) "
                       r"that divides the 64 tokens of a replica's batch \(train_batch_size 8 over 2 replica\(s\) "
                       r"of `batch`\): one of 16, 32, 64$" % tokens):
        make("x:2", "batch:x", n_ctx=16, local_attention_radius=4, train_batch_size=8,
             tokens_per_mb_per_replica=tokens)


def test_microbatched_bfloat16_training_graph_lowers_on_the_tpu_simd_mesh(tmp_path):
    """The TPU path (see test_model.py): the microbatch loop and bfloat16 weights on the SIMD mesh."""
    config = make("x:2,y:4", "batch:x,heads:y,vocab:y", n_ctx=16, local_attention_radius=4, train_batch_size=8,
                  model_path=str(tmp_path), tokens_per_mb_per_replica=16, precision="bfloat16")
    with tf.Graph().as_default():
        ops = tpu_training_step_ops(config)
        assert any(op.type == "TPUReplicatedInput" for op in ops) and any(op.type in ("While", "LoopCond") for op in ops)
        masters = [v for v in tf.global_variables() if v.name.startswith("gpt2/") and "adam" not in v.name]
        assert masters and all(v.dtype.base_dtype == tf.bfloat16 for v in masters)


def losses(config_path):
    return scalars(json.load(open(config_path))["model_path"], "loss")


@pytest.mark.parametrize("mesh_shape,tokens,features", [
    ("x:1", 32, {}),
    ("x:2", 32, {}),
    ("x:1", 64, {"moe_layers": [1], "moe_params": EXPERTS["moe_params"]}),
], ids=["one-device", "two-replicas", "experts"])
def test_training_with_microbatches_equals_whole_batches(make_config, mesh_shape, tokens, features):
    """main.py, 10 steps of 4 rows of 32 tokens: 4 microbatches on one device, 2 per replica on two, and 2
    with experts in a layer (the logged loss includes their balancing loss)."""
    whole = make_config("whole", **features)
    micro = make_config("micro", mesh_shape=mesh_shape, layout="batch:x", tokens_per_mb_per_replica=tokens,
                        **features)
    assert run_main("--model", whole) == 0 and run_main("--model", micro) == 0
    expected, got = losses(whole), losses(micro)
    assert sorted(got) == sorted(expected) == list(range(1, 11))
    np.testing.assert_allclose([got[s] for s in expected], [expected[s] for s in expected], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# bfloat16


def test_unknown_precision_is_an_error():
    with pytest.raises(ConfigError, match=r'^`precision` must be one of "float32", "bfloat16", got "float16"'):
        make(n_ctx=16, local_attention_radius=4, precision="float16")


def eval_loss(config_path):
    """The validation loss (bfloat16 computation under that precision) at the last checkpoint."""
    model_path = json.load(open(config_path))["model_path"]
    return [json.loads(line) for line in open(os.path.join(model_path, "eval_results.jsonl"))][-1]["loss"]


# bfloat16 computes with 8 bits of mantissa (the weights' float32 slices take the updates): over these
# 30 steps (loss 10.86 -> 7.65) the losses were measured within 0.05 % of float32's on CPUs with AVX512_BF16
# and within 0.04 % on an AVX2-only CPU, whose bfloat16 products trainer.hardware computes in float32
# (0.57 % on TF's own bfloat16 kernels there).
BF16_LOSS_RTOL = 5e-3


def test_bfloat16_trains_close_to_float32_and_checkpoints_bfloat16_weights(make_config):
    """Adam with weight decay (mesh-tf's own optimizer fails on bfloat16 there), in 2 microbatches."""
    steps = dict(train_steps=30, lr=0.01, lr_decay_end=30, eval_steps=2)
    fp32 = make_config("fp32", **steps)
    bf16 = make_config("bf16", precision="bfloat16", tokens_per_mb_per_replica=64, **steps)
    assert run_main("--model", fp32) == 0 and run_main("--model", bf16) == 0
    assert eval_loss(bf16) == pytest.approx(eval_loss(fp32), rel=BF16_LOSS_RTOL)
    expected, got = losses(fp32), losses(bf16)
    assert sorted(got) == sorted(expected) == list(range(1, 31))
    np.testing.assert_allclose([got[s] for s in expected], [expected[s] for s in expected], rtol=BF16_LOSS_RTOL)
    assert got[30] < got[1] - 1

    reader = tf.train.load_checkpoint(json.load(open(bf16))["model_path"])
    dtypes = reader.get_variable_to_dtype_map()
    weights = {n: t for n, t in dtypes.items() if n.startswith("gpt2/") and not n.endswith(("adam_m", "adam_v"))}
    slots = {n: t for n, t in dtypes.items() if n.endswith(("adam_m", "adam_v"))}
    assert len(weights) == 2 + 2 * 13 + 2 and set(weights.values()) == {tf.bfloat16}
    assert len(slots) == 2 * len(weights) and set(slots.values()) == {tf.float32}
    assert dtypes["global_step"] == tf.int64


# ---------------------------------------------------------------------------------------------
# recompute_grad


def test_recompute_grad_gives_the_same_loss_and_gradients():
    ids = np.random.RandomState(4).randint(0, 64, size=(4, 16))
    common = dict(n_ctx=16, local_attention_radius=4, train_batch_size=4)
    plain = step_results(make(**common), ids)
    # recompute_grad reorders float32 sums: 1.2e-6 of the gradient scale seen on an AVX-512 EPYC
    assert_same_step(step_results(make(recompute_grad=True, **common), ids), plain, rtol=4e-6)

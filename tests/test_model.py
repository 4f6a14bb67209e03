"""The Mesh-TF model against an independent numpy GPT-Neo, across meshes, and on the TPU (SIMD) lowering."""
import types

import numpy as np
import pytest
from conftest import BASE, make, placement, randomize_and_run
from reference_models import numpy_gpt_neo_logits
from tensorflow_estimator.python.estimator.mode_keys import ModeKeys
from tensorflow_estimator.python.estimator.tpu.tpu_config import InputPipelineConfig
from tensorflow.python.tpu import device_assignment as device_assignment_lib
from tensorflow.python.tpu import topology as topology_lib

from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models.context import Context
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.models.gpt import gpt_losses
from gpt_neo_mtf.models.attention import local_block_length
from gpt_neo_mtf.trainer.config import load_config
from gpt_neo_mtf.trainer.estimator import build_estimator
from gpt_neo_mtf.trainer.hardware import Hardware
from gpt_neo_mtf.trainer.model_fn import build_model_fn
from gpt_neo_mtf.trainer.preflight import preflight

def lowered(config, ids, labels, mesh_impl):
    """Build the model on `mesh_impl`; return (lowering, logits, loss, {variable name: gradient})."""
    graph = mtf.Graph()
    mesh = mtf.Mesh(graph, "mesh")
    d = Dims.build(config.model, ids.shape[0])
    shape = mtf.Shape([d.batch, d.sequence])
    tokens = mtf.import_fully_replicated(mesh, tf.constant(ids, tf.int32), shape)
    targets = mtf.import_fully_replicated(mesh, tf.constant(labels, tf.int32), shape)
    loss, _, logits = gpt_losses(tokens, targets, Context(d, config.model, train=False, seed=1))
    variables = graph.trainable_variables
    grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
    lowering = mtf.Lowering(graph, {mesh: mesh_impl})
    exported = {v.name: lowering.export_to_tf_tensor(g) for v, g in zip(variables, grads)}
    return lowering, lowering.export_to_tf_tensor(logits), lowering.export_to_tf_tensor(loss), exported


@pytest.mark.parametrize("n_ctx,radius", [
    (32, 8),   # blocks of 8: each query block sees its block and the previous one
    (30, 8),   # blocks of 10 (smallest divisor of 30 that holds the window)
    (14, 8),   # no divisor fits: full band mask
    (16, 32),  # window longer than the sequence: same as global
])
def test_logits_equal_numpy_reference(n_ctx, radius):
    config = make(n_ctx=n_ctx, local_attention_radius=radius)
    rng = np.random.RandomState(1)
    ids = rng.randint(0, 64, size=(2, n_ctx))
    ids[1, -1] = 64  # an id == n_vocab embeds as zeros, as the original's one-hot lookup
    with tf.Graph().as_default():
        lowering, logits, _, _ = lowered(config, ids, ids, placement(config, 1))
        weights, ours = randomize_and_run(lowering, logits)
    raw = dict(BASE, n_ctx=n_ctx, local_attention_radius=radius)
    expected = numpy_gpt_neo_logits(weights, raw, ids)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-4)


def test_local_block_length():
    assert local_block_length(2048, 256) == 256
    assert local_block_length(30, 8) == 10
    assert local_block_length(14, 8) is None
    assert local_block_length(16, 32) is None


@pytest.mark.parametrize("mesh_shape,layout", [("x:2,y:4", "batch:x,heads:y,vocab:y"),
                                               ("x:2,y:4", "batch:x,embd:y"),
                                               ("x:8", "batch:x")])
def test_loss_and_gradients_equal_across_meshes(mesh_shape, layout):
    ids = np.random.RandomState(2).randint(0, 64, size=(8, 16))
    labels = np.roll(ids, -1, axis=1)
    results = []
    for shape, rules, devices in (("x:1", "", 1), (mesh_shape, layout, 8)):
        config = make(shape, rules, n_ctx=16, local_attention_radius=4, train_batch_size=8)
        with tf.Graph().as_default():
            lowering, _, loss, grads = lowered(config, ids, labels, placement(config, devices))
            results.append(randomize_and_run(lowering, (loss, grads), devices=devices)[1])
    (loss_1, grads_1), (loss_8, grads_8) = results
    np.testing.assert_allclose(loss_8, loss_1, rtol=1e-5)
    assert grads_1.keys() == grads_8.keys() and len(grads_1) == 2 + 2 * 13 + 2
    for name in grads_1:
        scale = np.abs(grads_1[name]).max()
        assert np.abs(grads_8[name] - grads_1[name]).max() <= 1e-5 * max(scale, 1e-3), name


def v3_8_context():
    """What TPUEstimator hands the model_fn on a v3-8 (one host, 2x2 chips, 2 cores each), built
    from a real Topology and DeviceAssignment since this machine has no TPU."""
    coordinates = np.array([[[x, y, 0, core] for y in range(2) for x in range(2) for core in range(2)]], np.int32)
    topology = topology_lib.Topology(mesh_shape=[2, 2, 1, 2], device_coordinates=coordinates)
    assignment = device_assignment_lib.DeviceAssignment.build(topology, num_replicas=8)
    return types.SimpleNamespace(num_hosts=1, device_assignment=assignment,
                                 tpu_host_placement_function=lambda host_id: "/task:%d/device:CPU:0" % host_id)


def tpu_training_step_ops(config):
    """Build `config`'s training step for --tpu on a v3-8 in the current graph (batch 8, n_ctx 16);
    return the graph's ops."""
    model_fn = build_model_fn(config, Hardware("tpu", tpu_name="my-tpu"), steps_per_checkpoint=100)
    features = tf.zeros([8, 16], tf.int32)
    spec = model_fn(features, features, ModeKeys.TRAIN, {"context": v3_8_context()})
    assert spec.loss.shape.as_list() == [] and spec.train_op is not None
    return tf.get_default_graph().get_operations()


def test_training_graph_lowers_on_the_tpu_simd_mesh(tmp_path):
    """What a CPU can check of the TPU path: our model_fn builds the whole training step
    (SIMD lowering, host variable placement, optimizer, saver, summaries, dropout) for --tpu."""
    config = make("x:2,y:4", "batch:x,heads:y,vocab:y", n_ctx=16, local_attention_radius=4,
                  train_batch_size=8, model_path=str(tmp_path), attn_dropout=0.1, res_dropout=0.1)
    with tf.Graph().as_default():
        ops = tpu_training_step_ops(config)
        # SIMD lowering: one program for all 8 cores, which reads its core number from the TPU.
        assert any(op.type == "TPUReplicatedInput" for op in ops)
        # Dropout masks come from stateless generators (trainer/hardware.py).
        assert any(op.type == "StatelessRandomUniformV2" for op in ops)
        names = {v.name.split(":")[0] for v in tf.global_variables()}
        assert {"gpt2/wte", "gpt2/h1/attn/q/adam_m", "gpt2/h0/mlp/conv1d_main/c_proj/kernel/adam_v"} <= names
        # Master variables go to the TPU hosts' CPUs, not to the cores.
        assert all(v.device.endswith("CPU:0") for v in tf.global_variables() if v.name.startswith("gpt2/"))


@pytest.mark.parametrize("mode", [ModeKeys.EVAL, ModeKeys.PREDICT])
def test_eval_and_sampling_graphs_lower_on_the_tpu_simd_mesh(tmp_path, mode):
    """The SIMD mesh exports only fully replicated tensors: eval metrics and samples must be."""
    config = make("x:2,y:4", "batch:x,heads:y,vocab:y", n_ctx=16, local_attention_radius=4,
                  train_batch_size=8, eval_batch_size=8, predict_batch_size=8, model_path=str(tmp_path))
    model_fn = build_model_fn(config, Hardware("tpu", tpu_name="my-tpu"), steps_per_checkpoint=100)
    with tf.Graph().as_default():
        ids = tf.zeros([8, 16], tf.int32)
        if mode == ModeKeys.EVAL:
            spec = model_fn({"ids": ids, "bytes": tf.fill([8], 100)}, ids, mode, {"context": v3_8_context()})
            assert spec.loss.shape.as_list() == [] and spec.eval_metrics is not None
        else:
            spec = model_fn({"ids": ids, "lengths": tf.fill([8], 3)}, None, mode, {"context": v3_8_context()})
            assert spec.predictions["ids"].shape.as_list() == [8, 16]
            assert any(op.type == "LoopCond" for op in tf.get_default_graph().get_operations())


def test_tpu_estimator_and_run_config_for_the_tpu_flag(tmp_path):
    config = make("x:4,y:2", "batch:x,embd:y", n_ctx=16, train_batch_size=8, eval_batch_size=8,
                  iterations=50, model_path=str(tmp_path))
    # A resolver that names a TPU worker without contacting it (the real one asks the GCE metadata).
    cluster = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec({"worker": ["localhost:8470"]}), master="grpc://localhost:8470")
    estimator = build_estimator(config, Hardware("tpu", tpu_name="my-tpu"), 1000, cluster=cluster)
    run = estimator.config
    assert run.master == "grpc://localhost:8470" and run.model_dir == str(tmp_path)
    assert run.tpu_config.iterations_per_loop == 50
    assert run.tpu_config.num_shards == 8
    assert run.tpu_config.num_cores_per_replica == 1
    assert run.tpu_config.per_host_input_for_training == InputPipelineConfig.BROADCAST
    # Our saver hook replaces the estimator's default checkpointing.
    assert run.save_checkpoints_steps is None and run.save_checkpoints_secs is None
    assert run.save_summary_steps is None  # the host call writes the summaries
    assert estimator._ctx._use_tpu and estimator._ctx._train_batch_size == 8


@pytest.mark.parametrize("name,parameters", [("gpt_neo_125M", 125198592), ("gpt_neo_1-3B", 1315575808),
                                             ("gpt_neo_2-7B", 2651307520)])
def test_released_configs_have_the_released_parameter_counts(name, parameters):
    """V·D + n_ctx·D + L·(12D² + 10D) + 2D, the counts of the released GPT-Neo models (spec 3.11)."""
    assert preflight(load_config(name)) == parameters

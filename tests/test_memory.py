"""The memory estimate (trainer/memory.py) of the step that trains (trainer/step.py) against what TensorFlow
really places and allocates, and preflight's check that it fits a device."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import make, placement
from tensorflow_estimator.python.estimator.mode_keys import ModeKeys

from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.trainer.config import ConfigError, load_config
from gpt_neo_mtf.trainer.hardware import Hardware
from gpt_neo_mtf.trainer.memory import GiB, USABLE, DeviceMemory, estimate, largest_microbatch, lifetimes
from gpt_neo_mtf.trainer.model_fn import build_model_fn
from gpt_neo_mtf.trainer.optimizer import minimize
from gpt_neo_mtf.trainer.preflight import Device, device_of, gpu_memory, preflight
from gpt_neo_mtf.trainer.step import loss_and_gradients, nodes, symbolic

DEVICES = 8


def slices(graph):
    """The per-device slice variables (VarHandleOps) of a lowered mtf graph.

    Masters go to the host ("cpu:0", which on virtual CPUs is also mesh device 0) and keep their
    checkpoint names; slices are named `<master>_slice_<i>`, and slices of variables that
    mesh-tf stacked into one (autostack) `stacked/<first master>_slice_<i>`.
    """
    return [op for op in graph.get_operations() if op.type == "VarHandleOp" and "_slice_" in op.name]


def slice_bytes_per_device(graph, trainable_names):
    """{device index: [parameter bytes, optimizer bytes]} of the slice variables on each device."""
    per_device = {}
    for op in slices(graph):
        size = tf.TensorShape(op.get_attr("shape")).num_elements() * op.get_attr("dtype").size
        # Only variables alike (trainable or not) are stacked, so the first one tells.
        first = op.name.rsplit("_slice_", 1)[0].replace("stacked/", "", 1)
        column = 0 if first in trainable_names else 1
        per_device.setdefault(tf.DeviceSpec.from_string(op.device).device_index, [0, 0])[column] += size
    return per_device


@pytest.mark.parametrize("layout,overrides", [
    ("batch:x,heads:y,vocab:y", {}),  # the config's own: Adam
    # Adafactor factors the slots of variables whose two largest dimensions are >= 128.
    # One layer keeps the lowering on 8 devices quick.
    ("batch:x,embd:y,memory_length:y", {"opt_name": "adafactor", "weight_decay": 0.0, "n_embd": 128,
                                        "n_layer": 1, "attention_types": [[["global"], 1]]}),
])
def test_per_device_parameters_and_optimizer_equal_the_variables_on_each_device(tmp_path, layout, overrides):
    config = load_config("cpu_mesh8", dict(overrides, layout=layout, model_path=str(tmp_path)))
    expected = estimate(config).at()

    devices = tuple("/cpu:%d" % i for i in range(DEVICES))
    model_fn = build_model_fn(config, Hardware("cpu", devices), steps_per_checkpoint=100)
    with tf.Graph().as_default() as graph:
        ids = tf.zeros([config.train.train_batch_size, config.model.n_ctx], tf.int32)
        model_fn(ids, ids, ModeKeys.TRAIN, {})
        trainable = {v.op.name for v in tf.trainable_variables()}
        placed = slice_bytes_per_device(graph, trainable)
        handles = [op.outputs[0] for op in slices(graph)]
        # With soft placement off, creating every slice on its device fails if that device does not exist.
        session_config = tf.ConfigProto(device_count={"CPU": DEVICES}, allow_soft_placement=False)
        with tf.Session(config=session_config) as session:
            session.run(handles)

    assert placed == {i: [expected.parameters, expected.optimizer] for i in range(DEVICES)}


def tf_peak_bytes(**keys):
    """tf_peak_bytes_of(make(**keys)) in a fresh process: the allocator also counts what earlier tests'
    sessions left in this one."""
    script = ("import json, sys; sys.path.insert(0, %r); from conftest import make; "
              "from test_memory import tf_peak_bytes_of; print(tf_peak_bytes_of(make(**json.loads(sys.argv[1]))))"
              % os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", script, json.dumps(keys)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def tf_peak_bytes_of(config):
    """The CPU allocator's peak during one training step on one device, ops run one at a time: the step
    model_fn trains (trainer.step.loss_and_gradients) and the optimizer's update."""
    batch = config.train.train_batch_size
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, batch)
        ids = np.random.RandomState(0).randint(0, config.model.n_vocab, (batch, config.model.n_ctx))
        ids = mtf.import_fully_replicated(mesh, tf.constant(ids, tf.int32), mtf.Shape([d.batch, d.sequence]))
        loss, grads = loss_and_gradients(config, ids, ids)
        updates, _, _ = minimize(grads, graph.trainable_variables, config.train, tf.constant(1, tf.int64))
        lowering = mtf.Lowering(graph, {mesh: placement(config, 1)}, autostack=True)
        train_op = tf.group([lowering.lowered_operation(op) for op in updates])
        session_config = tf.ConfigProto(inter_op_parallelism_threads=1, intra_op_parallelism_threads=1)
        with tf.Session(config=session_config) as session:
            session.run(tf.global_variables_initializer())
            session.run(lowering.copy_masters_to_slices())
            metadata = tf.RunMetadata()
            session.run(train_op, options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE),
                        run_metadata=metadata)
    return max(memory.allocator_bytes_in_use for device in metadata.step_stats.dev_stats
               for node in device.node_stats for memory in node.memory)


# A vocabulary small enough that no tensor is a large share of the step: whether TF reuses a logits-sized
# buffer of the loss for its gradient varies from run to run.
SIZES = dict(n_ctx=128, n_embd=64, n_head=4, n_vocab=1024, local_attention_radius=32, train_batch_size=16)
# Of the estimate against TensorFlow's peak: see the tests' docstrings. oneDNN's kernels differ by CPU, and so
# do the buffers they take for their operands (not counted): the same step peaks higher on an AVX2-only CPU.
TOLERANCE = 0.4


@pytest.mark.parametrize("features", [
    {"recompute_grad": True},
    {"moe_layers": [1], "moe_params": {"moe_num_experts": 4, "moe_hidden_size": 128}},  # + the balancing loss
    {"mlm_training": True, "mlm_mask_id": 1},  # the loss averages the scored positions
    {"chunked_loss": True},  # a chunk of the logits at a time (1/16 of them), as models/chunked_loss.py declares
], ids=["recompute_grad", "experts", "mlm", "chunked_loss"])
def test_estimate_is_close_to_tensorflows_peak_allocation(features):
    """On one CPU device TF runs the graph's ops as they are (no fusion), so the estimate's total (variables,
    gradients and the activations' peak) is about what its allocator holds at most. TF's own order of the
    ops and its reuse of an input's buffer for an elementwise op's output make it differ (and vary a
    little between runs). Measured peak / estimate on an AVX2-only AMD EPYC: 1.25-1.38 with recompute_grad
    (the recomputed block's einsums copy their operands), 1.02 for a masked LM, 1.02 for the plain model.
    Tolerance: 40 %."""
    config = make(**SIZES, **features)
    assert estimate(config).at().total == pytest.approx(tf_peak_bytes(**SIZES, **features), rel=TOLERANCE)


def test_microbatches_lower_the_estimate_and_the_peak_alike():
    """The step of 1, 2 and 4 microbatches: each microbatch's activations are alive one at a time, so both the
    estimate and TensorFlow's peak fall with the count. Measured peak / estimate (AVX2-only AMD EPYC): 1.02, 1.00
    and 0.75-0.81 (tolerance 40 %, as above)."""
    totals, peaks = [], []
    for count in (1, 2, 4):
        keys = dict(SIZES, tokens_per_mb_per_replica=SIZES["n_ctx"] * SIZES["train_batch_size"] // count)
        totals.append(estimate(make(**keys)).at().total)
        peaks.append(tf_peak_bytes(**keys))
        assert totals[-1] == pytest.approx(peaks[-1], rel=TOLERANCE), count
    assert totals[0] > totals[1] > totals[2] and peaks[0] > peaks[1] > peaks[2]
    # What a microbatch's sequences hold is what a batch of that size holds; the variables, gradients and
    # the whole batch's ids are there whatever the count.
    assert totals[1] - totals[2] == pytest.approx((totals[0] - totals[1]) / 2, rel=0.05)


def test_the_walk_runs_the_microbatch_loop_once_per_microbatch():
    """trainer.step.nodes takes the loop's operations out of the loop (mesh-tf keeps them inside): a step of
    4 microbatches has the model's ops of the whole batch's step, each run 4 times on a quarter of the
    batch, and the loop sums the gradients."""
    whole = symbolic(make(**SIZES))
    looped = symbolic(make(**SIZES, tokens_per_mb_per_replica=SIZES["n_ctx"] * 4))

    def model_einsums(step):
        """(runs, output shape) of the einsums, but those that pick a microbatch's rows (a one-hot gather)."""
        return [(node.runs, node.op.outputs[0].shape) for node in nodes(step) if type(node.op).__name__ ==
                "EinsumOperation" and not any(d.name == "microbatch" for x in node.inputs for d in x.shape.dims)]

    assert [(4, shape) for _, shape in model_einsums(whole)] == [
        (runs, mtf.Shape([mtf.Dimension(d.name, d.size * 4) if d.name == "batch" else d for d in shape.dims]))
        for runs, shape in model_einsums(looped)]
    loop = nodes(looped)[-1]
    assert [total for _, total in loop.sums] == [looped.loss] + list(looped.grads)


def test_recompute_grad_keeps_one_block_input_per_layer():
    """With recompute_grad the backward pass reads only each block's input [batch, sequence, embd]
    (float32) of the blocks' tensors: one more layer keeps one more of them, a quarter per device
    under batch:x,embd:y on x:2,y:2."""
    kept = {}
    for n_layer in (2, 4):
        config = make("x:2,y:2", "batch:x,embd:y", n_ctx=32, n_layer=n_layer, train_batch_size=4,
                      attention_types=[[["global", "local"], n_layer // 2]], recompute_grad=True)
        kept[n_layer] = estimate(config).at().kept_for_backward
    layers, batch, n_ctx, n_embd, float32 = 2, 4, 32, 16, 4
    assert kept[4] - kept[2] == layers * (batch // 2) * n_ctx * (n_embd // 2) * float32


def test_largest_batch_that_fits():
    config = make("x:2", "batch:x", n_ctx=32, train_batch_size=4)
    device = estimate(config)
    budget = device.at(3).total
    assert device.max_batch_per_device(budget) == 3
    assert device.max_batch_per_device(budget - 1) == 2
    assert device.max_batch_per_device(device.at(1).total - device.at(1).activations) == 0


def with_tokens(config, tokens):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, tokens_per_mb_per_replica=tokens))


def test_largest_microbatch_that_fits():
    """12 sequences per replica: microbatches of 1, 2, 3, 4, 6 or 12 of them. A budget between the estimates of
    3 and 4 gets 3, and the estimate of each microbatched step is what the one-sequence step predicts."""
    config = make("x:2", "batch:x", n_ctx=32, train_batch_size=24)
    three, four = (estimate(with_tokens(config, k * 32)).at().total for k in (3, 4))
    assert largest_microbatch(config, (three + four) // 2) == 3 * 32
    assert largest_microbatch(config, four) == 4 * 32
    assert largest_microbatch(config, estimate(with_tokens(config, 32)).at().total - 1) is None


def test_a_tensor_with_two_dimensions_on_one_mesh_dimension_is_a_config_error():
    step = lifetimes(symbolic(make(n_ctx=16, local_attention_radius=4)))
    with pytest.raises(ConfigError, match="cannot lay out a tensor"):
        DeviceMemory(step, "x:2,y:4", "batch:x,heads:y,embd:y")


def test_preflight_refuses_a_step_that_does_not_fit_and_names_what_would():
    """Each key it names fits on its own: recompute_grad, chunked_loss, the largest microbatch, --auto_layout's
    layout."""
    sizes = dict(SIZES, n_vocab=8192)  # a step of more than 0.1 GiB: the message gives GiB
    config = make("x:2", "", **sizes)
    total = estimate(config).at().total
    memory = int(0.9 * total / USABLE)
    with pytest.raises(ConfigError) as error:
        preflight(config, device=Device(memory, "--device_memory 0.1"))
    message = str(error.value)
    assert message.startswith("training needs an estimated %.3g GiB per device, more than 90%% of the %.3g GiB of "
                              "--device_memory 0.1 (the biggest tensors: " % (total / GiB, memory / GiB))
    fixes = dict(re.findall(r"(\w+)=(\S+) \(", message.split("these would fit: ")[1]))
    assert fixes == {"recompute_grad": "true", "chunked_loss": "true", "tokens_per_mb_per_replica": "1024",
                     "layout": "batch:x"}
    for key, value in (("recompute_grad", True), ("chunked_loss", True), ("tokens_per_mb_per_replica", 1024)):
        group = "train" if key == "tokens_per_mb_per_replica" else "model"
        fixed = dataclasses.replace(config, **{group: dataclasses.replace(getattr(config, group), **{key: value})})
        assert preflight(fixed, device=Device(memory, "")) == preflight(config)
    assert preflight(make("x:2", "batch:x", **sizes), device=Device(memory, "")) == preflight(config)


def test_device_memory_is_the_flag_or_the_known_device():
    assert device_of(Hardware("cpu"), 0.5) == Device(GiB // 2, "--device_memory 0.5")
    assert device_of(Hardware("cpu")) is None  # the CPU mesh's devices share the host's memory
    assert device_of(Hardware("tpu", tpu_name="local")) is None  # TensorFlow does not report the generation
    assert device_of(Hardware("tpu", tpu_name="local", peak_tflops="v3")).memory == 16 * GiB
    assert device_of(Hardware("tpu", tpu_name="local", peak_tflops="v4")).memory == 32 * GiB
    assert [gpu_memory(name) for name in ("NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", "Tesla V100-PCIE-16GB",
                                          "Tesla T4")] == [40 * GiB, 80 * GiB, 16 * GiB, None]

"""What a training run shows: the log line (dated, `step N/train_steps`, loss, lr, grad_norm, throughput,
ETA) and the TensorBoard scalars, both fed by the training step's host call, so on TPU as on CPU; and
`log_grads`: each trainable variable's gradient norm as a TensorBoard scalar every `iterations` steps."""
import collections
import json
import logging
import os
import re
import struct

import numpy as np
import pytest
from conftest import make, placement, run_main, scalars
from tensorflow_estimator.python.estimator.mode_keys import ModeKeys
from test_model import v3_8_context

from gpt_neo_mtf.inputs.sequential import dataset_fn
from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models.context import Context
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.models.gpt import gpt_losses
from gpt_neo_mtf.trainer.config import load_config
from gpt_neo_mtf.trainer.hardware import Hardware
from gpt_neo_mtf.cli import loss_plot
from gpt_neo_mtf.trainer.model_fn import build_model_fn


def grad_norm_tags(model_path):
    """The TensorBoard tags under model_path that start with grad_norm."""
    tags = set()
    for path in tf.io.gfile.glob(model_path + "/events.out.tfevents.*"):
        for event in tf.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value if v.tag.startswith("grad_norm"))
    return tags


def gradient_norms_of_step(config, checkpoint, step):
    """{variable name: L2 norm of its gradient} in training step `step` (counted from 1), whose weights are
    `checkpoint`'s: the loss of that step's batch differentiated on one device, the norms summed in float64."""
    with tf.Graph().as_default():
        ids, labels = tf.data.make_one_shot_iterator(dataset_fn(config, "train", step - 1)()).get_next()
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, config.train.train_batch_size)
        shape = mtf.Shape([d.batch, d.sequence])
        ids, labels = (mtf.import_fully_replicated(mesh, x, shape) for x in (ids, labels))
        loss = gpt_losses(ids, labels, Context(d, config.model, train=True, seed=config.data.seed))[0]
        variables = graph.trainable_variables
        grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
        lowering = mtf.Lowering(graph, {mesh: placement(config, 1)})
        fetches = {v.name: lowering.export_to_tf_tensor(g) for v, g in zip(variables, grads)}
        saver = tf.train.Saver(tf.global_variables())
        with tf.Session() as session:
            saver.restore(session, checkpoint)
            session.run(lowering.copy_masters_to_slices())
            return {name: np.linalg.norm(g.astype(np.float64)) for name, g in session.run(fetches).items()}


def test_log_grads_writes_each_variables_gradient_norm_every_iterations_steps(make_config):
    """4 steps logged every 2, a checkpoint every step: the norms of steps 2 and 4 are written, those of step
    2 equal the gradients' of step 2's batch at step 1's checkpoint, and logging changes no loss."""
    logged = make_config("logged", train_steps=4, iterations=2, log_grads=True)
    plain = make_config("plain", train_steps=4, iterations=2)
    assert run_main("--model", logged, "--steps_per_checkpoint", "1") == 0 and run_main("--model", plain) == 0
    config = load_config(logged)
    expected = gradient_norms_of_step(config, config.model_path + "/model.ckpt-1", 2)
    assert len(expected) == 2 + 2 * 13 + 2
    assert grad_norm_tags(config.model_path) == {"grad_norm"} | {"grad_norm/" + name for name in expected}
    written = {name: scalars(config.model_path, "grad_norm/" + name) for name in expected}
    assert all(sorted(steps) == [2, 4] for steps in written.values())
    np.testing.assert_allclose([written[name][2] for name in expected], list(expected.values()), rtol=1e-5)
    total = scalars(config.model_path, "grad_norm")  # every step, with or without log_grads
    assert sorted(total) == [1, 2, 3, 4] and total[4] > 0
    for step in (2, 4):
        np.testing.assert_allclose(np.sqrt(sum(steps[step] ** 2 for steps in written.values())), total[step],
                                   rtol=1e-5)

    plain_path = json.load(open(plain))["model_path"]
    assert grad_norm_tags(plain_path) == {"grad_norm"}
    assert scalars(plain_path, "loss") == scalars(config.model_path, "loss")


def test_tpu_training_step_hands_the_norms_to_its_host_call(tmp_path):
    """On TPU the norms leave the TPU loop only as host call arguments: the v3-8 step builds, and its
    host call writes loss, lr, the global norm and one norm per variable."""
    config = make("x:2,y:4", "batch:x,heads:y,vocab:y", n_ctx=16, local_attention_radius=4, train_batch_size=8,
                  model_path=str(tmp_path), log_grads=True)
    with tf.Graph().as_default():
        model_fn = build_model_fn(config, Hardware("tpu", tpu_name="my-tpu"), steps_per_checkpoint=100)
        features = tf.zeros([8, 16], tf.int32)
        spec = model_fn(features, features, ModeKeys.TRAIN, {"context": v3_8_context()})
        host_call, tensors = spec.host_call
        assert len(tensors) == 3 + 1 + 2 + 2 * 13 + 2 and all(t.shape.as_list() == [1] for t in tensors)
        host_call(*tensors)
        writes = [op for op in tf.get_default_graph().get_operations() if op.type == "WriteSummary"]
        tags = {tf.get_static_value(op.inputs[3]).item().decode() for op in writes}
        assert len(writes) == len(tags) == len(tensors) - 1
        assert {"loss", "lr", "grad_norm", "grad_norm/gpt2/wte", "grad_norm/gpt2/h1/attn/q"} <= tags


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d step (\d+)/6 \| loss (\S+) \| lr (\S+) \| grad_norm (\S+) \| "
                      r"\d+ tokens/s \| \S+ TFLOP/s \| ETA (\S+( \S+)?)$")


def tag_counts(model_path):
    counts = collections.Counter()
    for path in tf.io.gfile.glob(model_path + "/events.out.tfevents.*"):
        for event in tf.train.summary_iterator(path):
            counts.update(v.tag for v in event.summary.value)
    return counts


def test_log_lines_and_tensorboard_show_loss_lr_and_grad_norm_once_each(make_config, capsys):
    config = make_config(train_steps=6, iterations=4)
    assert run_main("--model", config) == 0
    lines = [LOG_LINE.match(line) for line in capsys.readouterr().out.splitlines() if " step " in line]
    assert [int(m.group(1)) for m in lines] == [4, 6]  # every `iterations` steps, and the last, partial interval
    model_path = json.load(open(config))["model_path"]
    losses = scalars(model_path, "loss")
    assert float(lines[0].group(2)) == pytest.approx(np.mean([losses[s] for s in (1, 2, 3, 4)]), rel=1e-3)
    assert float(lines[1].group(2)) == pytest.approx(np.mean([losses[s] for s in (5, 6)]), rel=1e-3)
    assert lines[1].group(5) == "0s"
    counts = tag_counts(model_path)
    assert {tag: counts[tag] for tag in ("loss", "lr", "grad_norm", "tokens_per_sec")} == \
        {"loss": 6, "lr": 6, "grad_norm": 6, "tokens_per_sec": 2}
    assert not [tag for tag in counts if tag.startswith("loss_")]
    # The run as a picture (make demo draws its own so): a PNG of the training loss.
    png = os.path.join(model_path, "loss.png")
    assert loss_plot.main(["--model_path", model_path, "--output", png]) == 0
    assert "wrote %s: 6 training steps, 0 validation points" % png in capsys.readouterr().out
    with open(png, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", header[16:24]) == (700, 400)


@pytest.mark.parametrize("tpu_name,logs", [("local", True), ("my-tpu", False)])
def test_tpu_host_call_feeds_the_log_line_on_a_tpu_vm(tmp_path, caplog, tpu_name, logs):
    """On a TPU VM (`--tpu local`) the host call runs in this process: its step values reach the log line
    through it. A TPU node's host is another machine: there the log line has no loss (TensorBoard has)."""
    config = make("x:2,y:4", "batch:x,heads:y,vocab:y", n_ctx=16, local_attention_radius=4, train_batch_size=8,
                  model_path=str(tmp_path), iterations=2, train_steps=10)
    with tf.Graph().as_default():
        model_fn = build_model_fn(config, Hardware("tpu", tpu_name=tpu_name), steps_per_checkpoint=100)
        features = tf.zeros([8, 16], tf.int32)
        host_call, tensors = model_fn(features, features, ModeKeys.TRAIN, {"context": v3_8_context()}).host_call
        assert [t.dtype for t in tensors] == [tf.int64] + [tf.float32] * 3
    with tf.Graph().as_default(), tf.Session() as session, caplog.at_level(logging.INFO, "gptneo"):
        values = [tf.constant([4], tf.int64)] + [tf.constant([x], tf.float32) for x in (3.25, 0.001, 0.5)]
        # Only the log's op: the summaries need the writer TPUEstimator makes.
        to_log = [x for x in host_call(*values) if isinstance(x, tf.Operation) and x.type == "PyFunc"]
        assert len(to_log) == logs
        session.run(to_log)
    expected = "step 4/10 | loss 3.25 | lr 0.001 | grad_norm 0.5 | "
    assert any(expected in record.getMessage() for record in caplog.records) == logs

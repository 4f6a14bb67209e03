"""`log_grads`: each trainable variable's gradient norm, and the global one, as TensorBoard scalars every
`iterations` steps, written by the training step's host call (so also on TPU)."""
import json

import numpy as np
from conftest import make, placement, run_main, scalars
from tensorflow_estimator.python.estimator.mode_keys import ModeKeys
from test_model import v3_8_context

from inputs.sequential import dataset_fn
from meshtf import mtf, tf
from models.context import Context
from models.dims import Dims
from models.gpt import gpt_losses
from trainer.config import load_config
from trainer.hardware import Hardware
from trainer.model_fn import build_model_fn


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
    total = scalars(config.model_path, "grad_norm")
    assert sorted(total) == [2, 4] and total[4] > 0
    for step in (2, 4):
        np.testing.assert_allclose(np.sqrt(sum(steps[step] ** 2 for steps in written.values())), total[step],
                                   rtol=1e-5)

    plain_path = json.load(open(plain))["model_path"]
    assert grad_norm_tags(plain_path) == set()
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

"""`chunked_loss`: the tied output layer and cross-entropy over chunks of the vocabulary (models/chunked_loss.py).
Its values and gradients against numpy on every way of splitting it over a mesh, chunks of uneven sizes
included; the training step's loss and gradients against those of the whole logits; the objectives it cannot
serve refused; and a layout that could not hold the logits still refused."""
import numpy as np
import pytest
from conftest import make, placement, randomize_and_run
from test_block_features import SMALL, import_array
from test_precision_microbatch import assert_same_step

from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models import chunked_loss
from gpt_neo_mtf.models.chunked_loss import chunk_rows, tied_log_z_and_target
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.trainer.config import ConfigError
from gpt_neo_mtf.trainer.memory import DeviceMemory, lifetimes
from gpt_neo_mtf.trainer.step import loss_and_gradients, symbolic

VOCAB, EMBD = 64, 16


def test_chunks_cover_the_rows_once():
    rows = chunk_rows(50257)
    assert len(rows) == chunked_loss.CHUNKS and rows[0] == (0, 3142) and rows[-1] == (47130, 50257)
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    assert chunk_rows(5) == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]


def numpy_tied(h, wte, labels, r_log_z, r_target):
    """(log_z, target, d h, d wte) of Σ r_log_z·log_z + r_target·target, in float64."""
    logits = h @ wte.T
    top = logits.max(-1, keepdims=True)
    log_z = (top + np.log(np.exp(logits - top).sum(-1, keepdims=True)))[..., 0]
    inside = (labels >= 0) & (labels < VOCAB)
    target = np.take_along_axis(logits, np.clip(labels, 0, VOCAB - 1)[..., None], -1)[..., 0] * inside
    one_hot = np.eye(VOCAB + 1)[np.where(inside, labels, VOCAB)][..., :VOCAB]
    d_logits = np.exp(logits - log_z[..., None]) * r_log_z[..., None] + one_hot * r_target[..., None]
    return log_z, target, d_logits @ wte, np.einsum("bsv,bse->ve", d_logits, h)


@pytest.mark.parametrize("mesh_shape,layout,dtype", [
    ("x:1", "", tf.float32), ("x:1", "", tf.bfloat16), ("x:2", "vocab:x", tf.float32), ("x:2", "embd:x", tf.float32),
    ("x:2,y:2", "batch:x,vocab:y", tf.float32), ("x:2,y:2", "batch:x,embd:y", tf.bfloat16)])
def test_values_and_gradients_equal_numpy(mesh_shape, layout, dtype, monkeypatch):
    """In 6 chunks of uneven sizes: 64 rows make 11, .., 11, 9; 32 rows (a split vocabulary) 6, .., 6, 2."""
    monkeypatch.setattr(chunked_loss, "CHUNKS", 6)
    config = make(**SMALL, n_embd=EMBD, mesh_shape=mesh_shape, layout=layout)
    rng = np.random.RandomState(7)
    h, wte = rng.normal(0, 1, size=(2, 16, EMBD)), rng.normal(0, 0.5, size=(VOCAB, EMBD))
    labels = rng.randint(0, VOCAB, size=(2, 16))
    labels[0, 3], labels[1, 9], labels[1, 15] = VOCAB, -1, VOCAB - 1
    r_log_z, r_target = rng.normal(size=(2, 16)), rng.normal(size=(2, 16))
    if dtype == tf.bfloat16:  # the values bfloat16 holds
        h, wte = tf.Session().run([tf.cast(tf.cast(x, tf.bfloat16), tf.float64) for x in (h, wte)])
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, 2)
        h_in = mtf.cast(import_array(mesh, h, [d.batch, d.sequence, d.embd]), dtype)
        wte_in = mtf.cast(import_array(mesh, wte, [d.vocab, d.embd]), dtype)
        y = mtf.import_fully_replicated(mesh, tf.constant(labels, tf.int32), mtf.Shape([d.batch, d.sequence]))
        log_z, target = tied_log_z_and_target(h_in, wte_in, y, d.vocab)
        weights = [import_array(mesh, r, [d.batch, d.sequence]) for r in (r_log_z, r_target)]
        d_h, d_wte = mtf.gradients([mtf.reduce_sum(log_z * weights[0] + target * weights[1])], [h_in, wte_in])
        assert d_h.dtype == d_wte.dtype == dtype
        outputs = [log_z, target, mtf.cast(d_h, tf.float32), mtf.cast(d_wte, tf.float32)]
        lowering = mtf.Lowering(graph, {mesh: placement(config, config.mesh.size)})
        fetches = [lowering.export_to_tf_tensor(t) for t in outputs]
        assert any(op.type == "InplaceUpdate" for op in tf.get_default_graph().get_operations())
        with tf.Session(config=tf.ConfigProto(device_count={"CPU": config.mesh.size})) as session:
            results = session.run(fetches)
    tolerance = 2e-2 if dtype == tf.bfloat16 else 1e-5
    for name, ours, expected in zip(("log_z", "target", "d_h", "d_wte"), results,
                                    numpy_tied(h, wte, labels, r_log_z, r_target)):
        np.testing.assert_allclose(ours, expected, rtol=tolerance, atol=tolerance * np.abs(expected).max(),
                                   err_msg=name)


def test_a_layout_that_could_not_lay_out_the_logits_is_still_refused():
    """Training no longer holds the logits [batch, sequence, vocab], but its chunks are of them: vocab and
    batch on one mesh dimension stay a config error (evaluation and sampling hold the whole logits)."""
    step = lifetimes(symbolic(make(n_ctx=16, local_attention_radius=4)))
    with pytest.raises(ConfigError, match=r"cannot lay out a tensor of shape .*batch.*vocab"):
        DeviceMemory(step, "x:2", "batch:x,vocab:x")


def trained_step(config, ids, devices):
    """Loss and {variable name: gradient} of the trainer's own step (trainer/step.py) for ids -> ids shifted."""
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, ids.shape[0])
        shape = mtf.Shape([d.batch, d.sequence])
        tokens, targets = (mtf.import_fully_replicated(mesh, tf.constant(x, tf.int32), shape)
                           for x in (ids, np.roll(ids, -1, axis=1)))
        loss, grads = loss_and_gradients(config, tokens, targets)
        ops = graph.operations + [o for op in graph.operations if isinstance(op, mtf.WhileLoopOperation)
                                  for o in op._body_ops]  # a microbatch loop's
        assert any(isinstance(op, chunked_loss._TiedLogZAndTarget) for op in ops) == config.model.chunked_loss
        variables = graph.trainable_variables  # before the lowering stacks them
        lowering = mtf.Lowering(graph, {mesh: placement(config, devices)})
        exported = {v.name: lowering.export_to_tf_tensor(g) for v, g in zip(variables, grads)}
        return randomize_and_run(lowering, (lowering.export_to_tf_tensor(loss), exported), devices=devices)[1]


@pytest.mark.parametrize("mesh_shape,layout,devices", [
    ("x:1", "", 1), ("x:2,y:2", "batch:x,vocab:y", 4), ("x:2,y:2", "batch:x,embd:y", 4)])
def test_the_training_step_gives_the_same_loss_and_gradients(mesh_shape, layout, devices):
    """float32: the loss and every gradient as with the whole logits (wte's from its lookup and the output
    layer both), with 2 microbatches on one device."""
    ids = np.random.RandomState(5).randint(0, 64, size=(4, 16))
    common = dict(n_ctx=16, local_attention_radius=4, train_batch_size=4, mesh_shape=mesh_shape, layout=layout)
    if devices == 1:
        common["tokens_per_mb_per_replica"] = 32
    whole = trained_step(make(**common), ids, devices)
    assert_same_step(trained_step(make(chunked_loss=True, **common), ids, devices), whole, rtol=4e-6)


@pytest.mark.parametrize("key,value", [("no_weight_tie", True), ("entmax_loss", True)])
def test_objectives_that_need_the_logits_are_refused(key, value):
    with pytest.raises(ConfigError, match="`chunked_loss` computes the cross-entropy of the tied output layer "
                                          "without its logits, but `%s` needs them; unset chunked_loss or %s"
                       % (key, key)):
        make(**SMALL, chunked_loss=True, **{key: value})

"""Incremental (key/value cache) decoding against the full forward pass, and the sampling rules."""
import dataclasses

import numpy as np
import pytest
from conftest import make, placement, randomize_and_run

from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models.attention import decode_state
from gpt_neo_mtf.models.context import FLOAT32, Context
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.models.gpt import gpt, gpt_step, gpt_with_cache, variable_dtype
from gpt_neo_mtf.models.sampling import PredictConfig, generate, restrict
from gpt_neo_mtf.trainer import hardware


def full_logits(config, ids):
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, ids.shape[0])
        tokens = mtf.import_fully_replicated(mesh, tf.constant(ids, tf.int32), mtf.Shape([d.batch, d.sequence]))
        logits = gpt(tokens, Context(d, config.model, train=False, seed=1))
        lowering = mtf.Lowering(graph, {mesh: placement(config, 1)})
        return randomize_and_run(lowering, lowering.export_to_tf_tensor(logits))


def decoded(config, ids, lengths, sampling, weights, devices=1, eos_id=-1, min_prompt_length=1, seed=1):
    """generate() on ids [batch, decode length <= n_ctx]: the ids with samples."""
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, ids.shape[0])
        sequence = mtf.Dimension(d.sequence.name, ids.shape[1])
        tokens = mtf.import_fully_replicated(mesh, tf.constant(ids, tf.int32), mtf.Shape([d.batch, sequence]))
        prompt_lengths = mtf.import_fully_replicated(mesh, tf.constant(lengths, tf.int32), mtf.Shape([d.batch]))
        out = generate(tokens, prompt_lengths, Context(d, config.model, train=False, seed=seed), sampling, eos_id,
                       min_prompt_length)
        lowering = mtf.Lowering(graph, {mesh: placement(config, devices)})
        return randomize_and_run(lowering, lowering.export_to_tf_tensor(out), weights=weights, devices=devices)[1]


def stepped_logits(config, ids, prompt, weights, dtype=FLOAT32, impl=None, graph=None):
    """The logits [batch, length, vocab] that cached decoding computes for ids [batch, length <= n_ctx],
    every token teacher-forced: positions before prompt - 1 from the parallel pass that prefills the
    caches (as `generate` does), then one gpt_step per position over the caches, in a while loop; on
    mesh-tf's one-device placement mesh or `impl`, in a new TF graph or `graph`."""
    kinds = config.model.attention_types
    batch, length = ids.shape
    prefill = prompt - 1
    with (graph or tf.Graph()).as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        ctx = Context(Dims.build(config.model, batch).for_length(length), config.model, train=False, seed=1,
                      dtype=dtype)
        d = ctx.d
        tokens = mtf.import_fully_replicated(mesh, tf.constant(ids, tf.int32), mtf.Shape([d.batch, d.sequence]))
        if prefill:
            prefix = mtf.slice(tokens, 0, prefill, d.sequence.name)
            logits, layers = gpt_with_cache(prefix, dataclasses.replace(ctx, d=d.for_length(prefill)))
            logits = mtf.pad(mtf.to_float(logits), [0, length - prefill], d.sequence.name)
            caches = [decode_state(kind, mesh, ctx, layer) for kind, layer in zip(kinds, layers)]
        else:
            logits = mtf.zeros(mesh, mtf.Shape([d.batch, d.sequence, d.vocab]))
            caches = [decode_state(kind, mesh, ctx) for kind in kinds]
        sizes = [len(cache) for cache in caches]  # the loop carries the caches' tensors as one flat list

        def step(position, logits, *flat):
            tensors = iter(flat)
            caches = [tuple(next(tensors) for _ in range(size)) for size in sizes]
            token = mtf.reduce_sum(tokens * mtf.one_hot(position, d.sequence, dtype=tf.int32), reduced_dim=d.sequence)
            step_logits, caches = gpt_step(token, position, caches, ctx)
            logits += mtf.one_hot(position, d.sequence) * mtf.to_float(step_logits)
            return [position + 1, logits] + [x for cache in caches for x in cache]

        start = mtf.constant(mesh, prefill, dtype=tf.int32)
        final = mtf.while_loop(lambda position, *_: mtf.less(position, length), step,
                               [start, logits] + [x for cache in caches for x in cache])
        lowering = mtf.Lowering(graph, {mesh: impl or placement(config, 1)})
        return randomize_and_run(lowering, lowering.export_to_tf_tensor(final[1]), weights=weights)[1]


@pytest.mark.parametrize("in_float32", [False, True])
def test_bfloat16_decoding_is_float32s_within_bfloat16_rounding(in_float32):
    """predict_precision bfloat16: weights, caches and activations in bfloat16 (attention logits in float32),
    multiplied by TF's bfloat16 kernels or, on CPUs where those are slow, in float32 (hardware.PlacementMeshImpl)."""
    config = make(n_ctx=24, local_attention_radius=8, attention_types=[[["global", "local"], 1]])
    ids = np.random.RandomState(3).randint(0, 64, size=(2, 24))
    weights, expected = full_logits(config, ids)
    impl = hardware.PlacementMeshImpl(mtf.convert_to_shape("x:1"), [], ["/cpu:0"], seed=1, step=tf.constant(0),
                                      bfloat16_in_float32=in_float32)
    logits = stepped_logits(config, ids, 6, weights, dtype=variable_dtype("bfloat16", training=False), impl=impl)
    # bfloat16 keeps 8 bits of mantissa: 2^-8 of the logits' scale per rounding, a few roundings deep
    np.testing.assert_allclose(logits, expected, atol=0.05 * np.abs(expected).max())
    assert not np.allclose(logits, expected, atol=1e-5)  # it did compute in bfloat16


def test_bfloat16_decoding_in_float32_casts_each_weight_once_before_the_loop():
    """Multiplying bfloat16 in float32 must not cast every weight at every token: a loop-invariant operand
    enters the decoding loop already cast, by one cast per tensor, and nothing in the loop casts to float32."""
    config = make(n_ctx=24, local_attention_radius=8, attention_types=[[["global", "local"], 1]])
    ids = np.random.RandomState(3).randint(0, 64, size=(2, 24))
    graph = tf.Graph()
    with graph.as_default():
        impl = hardware.PlacementMeshImpl(mtf.convert_to_shape("x:1"), [], ["/cpu:0"], seed=1,
                                          step=tf.constant(0), bfloat16_in_float32=True)
    stepped_logits(config, ids, 6, None, dtype=variable_dtype("bfloat16", training=False), impl=impl, graph=graph)
    in_loop = [op for op in graph.get_operations() if op._get_control_flow_context() is not None]
    matmuls = [op for op in in_loop if op.type in ("Einsum", "MatMul", "BatchMatMulV2")]
    assert matmuls and {op.get_attr("T") for op in matmuls} == {tf.float32}
    entering = [x.op for op in matmuls for x in op.inputs if x.op.type == "Enter"]
    hoisted = {enter.inputs[0].op for enter in entering}
    assert len(hoisted) >= 2 * 6 + 1  # q, k, v, o, c_fc, c_proj per layer and the output's wte
    assert all(cast.type == "Cast" and cast.get_attr("SrcT") == tf.bfloat16 and cast.get_attr("DstT") == tf.float32
               and cast._get_control_flow_context() is None for cast in hoisted)
    assert len({cast.inputs[0].ref() for cast in hoisted}) == len(hoisted)
    assert not [op for op in in_loop if op.type == "Cast" and op.get_attr("DstT") == tf.float32
                and op.inputs[0].op.type == "Enter"]


@pytest.mark.parametrize("n_ctx,radius,kinds,length,prompt", [
    (24, 8, [["global", "local"], 1], 24, 1),   # prompt longer than the window: local layers use the ring buffer
    (24, 8, [["global", "local"], 1], 24, 14),  # 13 prefilled positions, more than the window
    (24, 8, [["global", "local"], 1], 16, 6),   # decode length < n_ctx; prefill shorter than the window
    (16, 32, [["local", "global"], 1], 16, 1),  # window longer than the context: full cache with a band mask
    (16, 32, [["local", "global"], 1], 16, 9),
    (12, 4, [["local"], 2], 12, 1),
    (12, 4, [["local"], 2], 8, 8),              # prefill all but the last position into a ring of 4
])
def test_incremental_logits_equal_full_forward_at_every_position(n_ctx, radius, kinds, length, prompt):
    """Positions before `prompt` - 1 come from the parallel prefill, the rest from single steps;
    causal attention means the first `length` positions of a full forward are the reference."""
    config = make(n_ctx=n_ctx, local_attention_radius=radius, attention_types=[kinds])
    ids = np.random.RandomState(3).randint(0, 64, size=(2, n_ctx))
    weights, expected = full_logits(config, ids)
    logits = stepped_logits(config, ids[:, :length], prompt, weights)
    np.testing.assert_allclose(logits, expected[:, :length], rtol=0, atol=1e-5)


def greedy_reference(config, weights, prompt, steps):
    """Greedy continuation by repeated full forward passes (what the cache must reproduce)."""
    ids = list(prompt)
    n_ctx = config.model.n_ctx
    while len(ids) < min(len(prompt) + steps, n_ctx):
        padded = np.array([ids + [0] * (n_ctx - len(ids))])
        with tf.Graph().as_default():
            graph = mtf.Graph()
            mesh = mtf.Mesh(graph, "mesh")
            d = Dims.build(config.model, 1)
            tokens = mtf.import_fully_replicated(mesh, tf.constant(padded, tf.int32), mtf.Shape([d.batch, d.sequence]))
            logits = gpt(tokens, Context(d, config.model, train=False, seed=1))
            lowering = mtf.Lowering(graph, {mesh: placement(config, 1)})
            out = randomize_and_run(lowering, lowering.export_to_tf_tensor(logits), weights=weights)[1]
        ids.append(int(np.argmax(out[0, len(ids) - 1])))
    return ids


@pytest.mark.parametrize("prompts,length", [
    ([[5, 9, 2], [7], [1, 2, 3, 4, 5, 6, 7]], 16),
    ([[5, 9, 2, 8, 8, 1], [7, 3, 3, 3, 3], [1, 2, 3, 4, 5, 6, 7]], 13),  # prefill 4 positions; caches of 13
])
def test_greedy_batch_of_different_prompt_lengths_equals_full_recompute(prompts, length):
    config = make(n_ctx=16, local_attention_radius=4, attention_types=[[["global", "local"], 1]], train_batch_size=3)
    weights, _ = full_logits(config, np.zeros((3, 16), np.int64))
    ids = np.zeros((3, length), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = prompt
    out = decoded(config, ids, [len(p) for p in prompts], PredictConfig(temperature=0, predict_max_steps=6),
                  weights, min_prompt_length=min(len(p) for p in prompts))
    for row, prompt in enumerate(prompts):
        expected = greedy_reference(config, weights, prompt, 6)
        assert list(out[row, :len(expected)]) == expected
        assert not out[row, len(expected):].any()  # nothing written past predict_max_steps


@pytest.mark.parametrize("min_prompt_length", [1, 3])  # zero caches (folded into constants) / prefilled ones
def test_generations_write_caches_in_place_each_into_its_own_buffers(min_prompt_length):
    """Two generations in one graph, run at once, from the same prompts: each cache is written in place
    (InplaceUpdate, no copying scatter) into a buffer of its own, so both decode as full recompute does."""
    config = make(n_ctx=16, local_attention_radius=4, attention_types=[[["global", "local"], 1]], train_batch_size=2)
    weights, _ = full_logits(config, np.zeros((2, 16), np.int64))
    prompts = [[5, 9, 2], [7, 3, 3, 1]]
    ids = np.zeros((2, 16), np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = prompt
    with tf.Graph().as_default() as tf_graph:
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, 2)
        tokens = mtf.import_fully_replicated(mesh, tf.constant(ids, tf.int32), mtf.Shape([d.batch, d.sequence]))
        lengths = mtf.import_fully_replicated(mesh, tf.constant([3, 4], tf.int32), mtf.Shape([d.batch]))
        outs = [generate(tokens, lengths, Context(d, config.model, train=False, seed=1),
                         PredictConfig(temperature=0, predict_max_steps=5), -1, min_prompt_length) for _ in range(2)]
        lowering = mtf.Lowering(graph, {mesh: placement(config, 1)})
        first, second = randomize_and_run(lowering, [lowering.export_to_tf_tensor(x) for x in outs], weights=weights)[1]
    types = {op.type for op in tf_graph.get_operations()}
    assert "InplaceUpdate" in types and "TensorScatterUpdate" not in types
    np.testing.assert_array_equal(first, second)
    for row, prompt in enumerate(prompts):
        assert list(first[row, :len(prompt) + 5]) == greedy_reference(config, weights, prompt, 5)


def test_stops_at_eos_and_sampling_is_reproducible_and_mesh_independent():
    config = make(n_ctx=16, local_attention_radius=4, attention_types=[[["global", "local"], 1]], train_batch_size=4)
    weights, _ = full_logits(config, np.zeros((4, 16), np.int64))
    ids = np.zeros((4, 16), np.int64)
    ids[:, 0] = [3, 3, 8, 8]
    sampling = PredictConfig(temperature=1.0)
    first = decoded(config, ids, [1] * 4, sampling, weights, seed=7)
    again = decoded(config, ids, [1] * 4, sampling, weights, seed=7)
    np.testing.assert_array_equal(first, again)
    assert (first[0] != first[1]).any()  # rows with the same prompt draw different samples
    four_devices = make("x:2,y:2", "batch:x,vocab:y,heads:y", n_ctx=16, local_attention_radius=4,
                        attention_types=[[["global", "local"], 1]], train_batch_size=4)
    np.testing.assert_array_equal(decoded(four_devices, ids, [1] * 4, sampling, weights, devices=4, seed=7), first)
    other_seed = decoded(config, ids, [1] * 4, sampling, weights, seed=8)
    assert (other_seed != first).any()
    # With eos = the token row 0 drew at position 3, row 0 stops there (nothing after it).
    eos = int(first[0, 3])
    stopped = decoded(config, ids, [1] * 4, sampling, weights, eos_id=eos, seed=7)
    cut = list(stopped[0]).index(eos)
    assert cut <= 3 and not stopped[0, cut + 1:].any()


def test_top_k_and_top_p_keep_exactly_the_specified_tokens():
    logits = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], np.float32))
    with tf.Graph().as_default(), tf.Session() as session:
        def kept(top_k, top_p):
            return np.isfinite(session.run(restrict(tf.constant(logits), top_k, top_p)))[0].tolist()
        assert kept(2, 1.0) == [True, True, False, False, False]
        assert kept(0, 0.5) == [True, False, False, False, False]     # 0.5 alone reaches p
        assert kept(0, 0.6) == [True, True, False, False, False]      # 0.5 < 0.6: add 0.2
        assert kept(0, 0.85) == [True, True, True, False, False]      # 0.7 < 0.85 <= 0.85
        assert kept(0, 0.86) == [True, True, True, True, False]
        assert kept(3, 0.6) == [True, True, False, False, False]
        assert kept(0, 1.0) == [True] * 5

"""The original's experimental attention and position features: linear and "none" layers, memory
key/values, rotary and axial position embeddings. Values against the numpy reference, incremental
decoding against the full forward pass, and training runs of the real main.py."""
import dataclasses
import json
import math

import numpy as np
import pytest
from conftest import BASE, checkpoint_logits, make, placement, randomize_and_run, run_main, scalar_events
from reference_models import numpy_attention, numpy_gpt_neo_logits, numpy_position_table
from test_sampling import full_logits, stepped_logits

from gpt_neo_mtf.convert.huggingface import ConversionError, export_hf
from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models.attention import attention, attention_masks
from gpt_neo_mtf.models.context import Context
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.models.gpt import gpt
from gpt_neo_mtf.models.positions import position_embedding
from gpt_neo_mtf.trainer import flops
from gpt_neo_mtf.trainer.config import ConfigError, load_config

# Layer level: n_embd 16, 4 heads of 4 features, 16 positions, local window 4 (blocks of 4).
LAYER = dict(n_ctx=16, local_attention_radius=4)


def layer_output(config, kind, x):
    """attention() of layer "gpt2/h0" on x [batch, sequence, embd] -> (weights, output)."""
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config, x.shape[0])
        h = mtf.import_fully_replicated(mesh, tf.constant(x, tf.float32), mtf.Shape([d.batch, d.sequence, d.embd]))
        with tf.variable_scope("gpt2"), tf.variable_scope("h0"):
            out, _ = attention(h, kind, Context(d, config, train=False, seed=1, masks=attention_masks(mesh, config, d)))
        lowering = mtf.Lowering(graph, {mesh: placement(make(**LAYER), 1)})
        return randomize_and_run(lowering, lowering.export_to_tf_tensor(out))


@pytest.mark.parametrize("kind,features", [
    ("linear", {}),
    ("linear", {"mlm_training": True}),  # not causal (masked-LM models only)
    ("global", {"mlm_training": True}),
    ("local", {"mlm_training": True}),
    ("linear", {"rotary_emb": True}),
    ("global", {"rotary_emb": True}),
    ("local", {"rotary_emb": True}),
    ("global", {"num_mem_kv": 3}),
], ids=["linear-causal", "linear-not-causal", "global-not-causal", "local-not-causal", "linear-rotary",
        "global-rotary", "local-rotary", "global-memory"])
def test_attention_equals_numpy_reference(kind, features):
    # Set on the model config alone: a whole masked-LM config also needs the mlm_* data keys.
    config = dataclasses.replace(make(attention_types=[[[kind], 2]], **LAYER).model, **features)
    x = np.random.RandomState(0).normal(0, 1, size=(2, 16, 16))
    weights, ours = layer_output(config, kind, x)
    expected = numpy_attention(x, weights, "gpt2/h0", kind, dict(BASE, **LAYER, **features))
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_axial_position_table_equals_the_numpy_grid():
    config = make(axial_pos_emb=[3, 7], **LAYER).model
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config, 1)
        with tf.variable_scope("gpt2"):
            positions = mtf.range(mesh, d.sequence, tf.int32)
            table = position_embedding(positions, Context(d, config, train=False, seed=1))
        shapes = {v.name: v.shape.to_integer_list for v in graph.trainable_variables}
        lowering = mtf.Lowering(graph, {mesh: placement(make(**LAYER), 1)})
        weights, ours = randomize_and_run(lowering, lowering.export_to_tf_tensor(table))
    assert shapes == {"gpt2/axial_wpe_1": [3, 16], "gpt2/axial_wpe_2": [7, 16]}
    expected = numpy_position_table(weights, dict(BASE, axial_pos_emb=[3, 7], **LAYER))
    np.testing.assert_allclose(ours, expected[:16], rtol=0, atol=1e-6)


# Whole models: every attention kind and feature, in two combinations (axial and rotary exclude each other).
MEMORY_AXIAL = dict(n_ctx=16, n_layer=3, attention_types=[[["linear", "none", "global"], 1]], num_mem_kv=3,
                    axial_pos_emb=[4, 5])
ROTARY = dict(n_ctx=24, n_layer=3, local_attention_radius=8, attention_types=[[["global", "local", "linear"], 1]],
              rotary_emb=True)


@pytest.mark.parametrize("features,prompts", [(MEMORY_AXIAL, (1, 7)), (ROTARY, (1, 14))],
                         ids=["memory-axial", "rotary"])
def test_logits_equal_numpy_and_incremental_decoding_equals_full_forward(features, prompts):
    """The full forward against numpy; then decoding with every position teacher-forced, from a
    prefill of prompt - 1 positions (14 > the local window of 8: a full ring buffer), against it."""
    config = make(**features)
    n_ctx = features["n_ctx"]
    ids = np.random.RandomState(3).randint(0, 64, size=(2, n_ctx))
    weights, expected = full_logits(config, ids)
    np.testing.assert_allclose(expected, numpy_gpt_neo_logits(weights, dict(BASE, **features), ids), rtol=0, atol=1e-5)
    for prompt in prompts:
        np.testing.assert_allclose(stepped_logits(config, ids, prompt, weights), expected, rtol=0, atol=1e-5)


def test_flops_count_what_each_kind_computes():
    """`none` layers have no q, k, v, o; a linear layer counts its recurrence (head size² per head and
    token, as many as head-size keys); a global layer's queries also see the memory keys."""
    config = make(**MEMORY_AXIAL).model
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config, 1)
        gpt(mtf.zeros(mesh, mtf.Shape([d.batch, d.sequence]), tf.int32), Context(d, config, train=False, seed=0))
        shapes = {v.name: v.shape.to_integer_list for v in graph.trainable_variables}
    matrices = sum(np.prod(shape) for name, shape in shapes.items() if len(shape) == 2 and "axial" not in name)
    # linear and global: 12·16² each, none: the MLP's 8·16²; then the tied output projection 16·64.
    assert flops.matmul_params(config) == matrices == (12 + 8 + 12) * 256 + 1024
    # linear: 4 keys (head size); none: 0; global: 16·17/2 pairs / 16 queries + 3 memory keys.
    assert flops.attention_flops_per_token(config) == 4 * 16 * (4 + 0 + 8.5 + 3)


@pytest.mark.parametrize("features,present,absent,predict", [
    (dict(MEMORY_AXIAL, axial_pos_emb=[8, 4]),
     {"gpt2/axial_wpe_1": [8, 32], "gpt2/axial_wpe_2": [4, 32],
      "gpt2/h2/attn/attention/mem_k": [3, 4, 8], "gpt2/h2/attn/attention/mem_v": [3, 4, 8]},
     ["gpt2/wpe", "gpt2/h1/attn/q", "gpt2/h1/norm_1/g", "gpt2/h0/attn/attention/mem_k"], True),
    (ROTARY, {"gpt2/h2/attn/q": [32, 32]}, ["gpt2/wpe"], False),
], ids=["memory-axial", "rotary"])
def test_trains_saves_resumes_and_samples(make_config, tmp_path, features, present, absent, predict):
    """main.py on the sample corpus (n_ctx 32): finite, falling loss; the checkpoint has the original's
    names and shapes; a second run continues from it; --predict decodes greedily from it (once:
    decoding each feature is tested above, this is the path through main.py)."""
    def config_path(train_steps):
        return make_config("features", **dict(features, n_ctx=32, train_steps=train_steps, lr_decay_end=12,
                                              iterations=4, lr=0.01))

    assert run_main("--model", config_path(8)) == 0
    model_path = json.load(open(config_path(8)))["model_path"]
    found = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_path)).get_variable_to_shape_map()
    assert {name: found.get(name) for name in present} == present
    assert not [name for name in absent if name in found]

    path = config_path(12)
    assert run_main("--model", path) == 0
    events = scalar_events(model_path, "loss")
    assert sorted(step for step, _ in events) == list(range(1, 13))  # steps 9-12 continued the checkpoint
    loss = dict(events)
    assert all(math.isfinite(v) for v in loss.values()) and loss[12] < loss[1] - 0.5
    if not predict:
        return

    prompt, out = tmp_path / "prompt.txt", str(tmp_path / "samples")
    prompt.write_text("The unicorns spoke perfect English")
    assert run_main("--model", path, "--predict", "--prompt", str(prompt), "--temperature", "0",
                    "--max_new_tokens", "5", "--output", out) == 0
    sample = json.loads(open(out + ".jsonl").readline())
    assert len(sample["tokens"]) == 5 or sample["finish"] == "eos"
    # Greedy: each new token is the full forward pass's argmax after the tokens before it.
    ids = sample["prompt_tokens"] + sample["tokens"]
    logits = checkpoint_logits(load_config(path), tf.train.latest_checkpoint(model_path),
                               np.array([ids + [0] * (32 - len(ids))]))
    start = len(sample["prompt_tokens"])
    assert [int(np.argmax(logits[0, p - 1])) for p in range(start, len(ids))] == sample["tokens"]


@pytest.mark.parametrize("features,message", [
    ({"rotary_emb": True}, "rotary_emb: no HuggingFace GPT-Neo equivalent"),
    ({"axial_pos_emb": [4, 4], "num_mem_kv": 2}, "axial_pos_emb, num_mem_kv: no HuggingFace GPT-Neo equivalent"),
    ({"attention_types": [[["linear", "none"], 1]]}, "attention type(s) linear, none have no HuggingFace GPT-Neo"),
], ids=["rotary", "axial-memory", "linear-none"])
def test_huggingface_export_refuses_what_its_gpt_neo_lacks(tmp_path, features, message):
    with pytest.raises(ConversionError) as error:
        export_hf(str(tmp_path), make(n_ctx=16, **features), str(tmp_path / "hf"))
    assert str(error.value).startswith(message)


@pytest.mark.parametrize("overrides,message", [
    ({"rotary_emb": True, "n_embd": 12, "n_head": 4}, "`rotary_emb` turns pairs of a head's features, but the head "
                                                      "size n_embd / n_head = 3 is odd"),
    ({"rotary_emb": True, "mesh_shape": "x:2", "layout": "features_per_head:x"},
     "`rotary_emb` splits each head's features into halves, so `layout` cannot split `features_per_head`"),
    ({"rotary_emb": True, "axial_pos_emb": [4, 4]}, "`axial_pos_emb` and `rotary_emb` are both set"),
    ({"axial_pos_emb": [4, 3]}, "`axial_pos_emb` [4, 3] has 12 positions but `n_ctx` is 16"),
    ({"axial_pos_emb": [16]}, "`axial_pos_emb` must be two positive sizes [rows, columns]"),
    ({"axial_pos_emb": [4, 0]}, "`axial_pos_emb` must be two positive sizes [rows, columns]"),
    ({"num_mem_kv": -1}, "`num_mem_kv` must not be negative, got -1"),
    ({"num_mem_kv": 2, "attention_types": [[["local", "linear"], 1]]},
     "`num_mem_kv` adds memory key/values to global attention layers, but `attention_types` has none"),
    ({"num_mem_kv": 3, "mesh_shape": "x:2", "layout": "mem_kv_sequence:x"},
     "`layout` splits 'mem_kv_sequence' (size 3) over mesh dimension 'x' of size 2"),
    ({"attention_types": [[["linear", "global"], 1]], "mesh_shape": "x:2", "layout": "heads:x,features_per_head_in:x"},
     "`layout` puts two of batch, heads, features_per_head_in, features_per_head on one mesh dimension"),
], ids=["rotary-odd-head", "rotary-layout", "rotary-and-axial", "axial-too-small", "axial-one-size", "axial-zero",
        "mem-kv-negative", "mem-kv-no-global", "mem-kv-layout", "linear-state-layout"])
def test_bad_feature_values_are_config_errors(overrides, message):
    with pytest.raises(ConfigError) as error:
        make(n_ctx=16, **overrides)
    assert str(error.value).startswith(message)

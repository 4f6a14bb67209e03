"""FLOPs per token against hand counts and the model's own variables and masks; peak FLOP/s; MFU in
the training log and TensorBoard of real runs of main.py."""
import dataclasses
import json
import re

import numpy as np
import pytest
from conftest import make, placement, run_main, scalars

from gpt_neo_mtf.cli import gpt_neo as main
from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.models.context import Context
from gpt_neo_mtf.models.dims import Dims
from gpt_neo_mtf.models.gpt import gpt
from gpt_neo_mtf.models.attention import attention_masks
from gpt_neo_mtf.trainer import flops
from gpt_neo_mtf.trainer.config import load_config
from gpt_neo_mtf.trainer.hardware import Hardware
from gpt_neo_mtf.trainer.preflight import preflight

# conftest.BASE: 2 layers (local, global), n_embd 16, n_vocab 64; here n_ctx 32 and a window of 8.
SMALL = dict(n_ctx=32, local_attention_radius=8)


def test_matmul_params_are_the_models_matrices():
    config = make(**SMALL)
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        d = Dims.build(config.model, 2)
        gpt(mtf.zeros(mesh, mtf.Shape([d.batch, d.sequence]), tf.int32), Context(d, config.model, train=False, seed=0))
        shapes = {v.name: v.shape.to_integer_list for v in graph.trainable_variables}
    # Every matrix multiplies activations but wpe, which is added; wte is the (tied) output projection.
    matrices = sum(int(np.prod(shape)) for name, shape in shapes.items() if len(shape) == 2 and name != "gpt2/wpe")
    # 2 layers x 12·16² (q, k, v, o: 4·D²; c_fc, c_proj: 8·D²) + 16·64 (output projection)
    assert flops.matmul_params(config.model) == matrices == 2 * 12 * 256 + 1024 == 7168
    # The rest of the parameter count: wpe (32·16), per layer 10·16 of biases and norm gains, ln_f 2·16.
    assert preflight(config) - matrices == 32 * 16 + 2 * 10 * 16 + 2 * 16


def visible_pairs(config):
    """{kind: number of (query, key) pairs} that the model's own additive attention masks leave at 0."""
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        masks = attention_masks(mesh, config.model, Dims.build(config.model, 1))
        lowering = mtf.Lowering(graph, {mesh: placement(config, 1)})
        exported = {kind: lowering.export_to_tf_tensor(masks[kind]) for kind in ("global", "local")}
        with tf.Session() as session:
            return {kind: int((value == 0).sum()) for kind, value in session.run(exported).items()}


@pytest.mark.parametrize("n_ctx,radius", [(32, 8), (30, 8), (14, 8), (16, 32)])  # blocks of 8, of 10, band, > n_ctx
def test_attended_keys_are_the_pairs_the_masks_keep(n_ctx, radius):
    config = make(n_ctx=n_ctx, local_attention_radius=radius)
    for kind, pairs in visible_pairs(config).items():
        assert flops.attended_keys(config.model, kind) * n_ctx == pytest.approx(pairs, abs=1e-9), kind


def test_flops_per_token_by_hand():
    c = make(**SMALL).model
    # Global layer: query p sees p + 1 keys, 32·33/2 = 528 pairs, 16.5 keys per query.
    # Local layer: the first 8 queries see p + 1 keys (36 pairs), the other 24 see 8 (192): 7.125 per query.
    # q·kᵀ and weights·v are 2·16 FLOPs each per key: 64 · (16.5 + 7.125) = 1512.
    assert flops.attention_flops_per_token(c) == 1512
    # Matmuls: 2 · 7168 = 14336.
    assert flops.forward_flops_per_token(c) == 14336 + 1512 == 15848
    assert flops.model_flops_per_token(c) == 3 * 15848 == flops.hardware_flops_per_token(c)


def test_local_attention_counts_its_window_and_global_half_the_square():
    def attention(kinds, n_ctx, radius=256):
        return flops.attention_flops_per_token(make(attention_types=kinds, n_ctx=n_ctx,
                                                    local_attention_radius=radius).model)

    # n_embd 16, n_ctx 1024: global 4·16·1025/2 per layer; local (256·257/2 + 768·256)/1024 = 224.125 keys
    assert attention(["global", "global"], 1024) == 2 * 4 * 16 * 512.5 == 65600
    assert attention(["local", "local"], 1024) == 2 * 4 * 16 * 224.125 == 28688
    assert attention(["global", "local"], 1024) == (65600 + 28688) / 2
    # A window that covers the context is global attention.
    assert attention(["local", "local"], 64, radius=64) == attention(["local", "local"], 64, radius=1000) \
        == attention(["global", "global"], 64)


def test_recompute_counts_the_blocks_forward_again_in_hardware_flops_only():
    plain = make(**SMALL).model
    recomputed = make(recompute_grad=True, **SMALL).model
    assert flops.model_flops_per_token(recomputed) == flops.model_flops_per_token(plain) == 47544
    # The blocks' forward pass: 15848 less the output projection (2·16·64 = 2048) is done again.
    assert flops.hardware_flops_per_token(recomputed) == 47544 + 13800


@pytest.mark.parametrize("device_name,key", [
    ("NVIDIA A100-SXM4-40GB", "a100"), ("NVIDIA A100 80GB PCIe", "a100"), ("NVIDIA H100 80GB HBM3", "h100"),
    ("NVIDIA H100 PCIe", "h100-pcie"), ("Tesla V100-SXM2-16GB", "v100"), ("Tesla V100-PCIE-32GB", "v100-pcie"),
    ("Tesla T4", "t4"), ("NVIDIA GeForce RTX 4090", None)])
def test_gpu_model_names(device_name, key):
    assert flops.gpu_table_name(device_name) == key


def test_mesh_peak():
    cpu = Hardware("cpu", ("/cpu:0", "/cpu:1"))
    unknown = flops.mesh_peak(cpu, "float32", 2)
    assert unknown.flops is None and unknown.source == "no peak FLOP/s known for cpu (pass --peak_tflops)"
    # On CPU the declared figure is the machine's, however many virtual devices share it.
    assert flops.mesh_peak(dataclasses.replace(cpu, peak_tflops=1.5), "float32", 2).flops == 1.5e12
    assert flops.mesh_peak(Hardware("gpu", peak_tflops=2.0), "float32", 4).flops == 8e12
    # TPUs compute float32 matmuls in bfloat16 passes, Ampere GPUs in TF32 (TensorFlow's default).
    assert flops.mesh_peak(Hardware("tpu", peak_tflops="v3"), "float32", 8).flops == 8 * 61.5e12
    assert flops.mesh_peak(Hardware("gpu", peak_tflops="a100"), "float32", 2).flops == 2 * 156e12
    assert flops.mesh_peak(Hardware("gpu", peak_tflops="v100"), "float32", 1).flops == 15.7e12
    assert flops.mesh_peak(Hardware("gpu", peak_tflops="t4"), "bfloat16", 1) == flops.Peak(
        None, "t4 has no bfloat16 peak in trainer/flops.py")
    # TensorFlow does not tell a TPU's generation.
    assert flops.mesh_peak(Hardware("tpu"), "float32", 8).source == "no peak FLOP/s known for tpu (pass --peak_tflops)"


@pytest.mark.parametrize("value,error", [("v9", "'v9' is neither a number of TFLOP/s nor a known device (v2, v3"),
                                         ("0", "a peak of '0' TFLOP/s must be positive")])
def test_bad_peak_tflops_flag(value, error, capsys):
    assert main.parse_args(["--model", "m", "--peak_tflops", "V3"]).peak_tflops == "v3"
    with pytest.raises(SystemExit):
        main.parse_args(["--model", "m", "--peak_tflops", value])
    assert error in capsys.readouterr().err


LOG_LINE = re.compile(r"step (\d+)/\d+ \| loss .* \| (\d+) tokens/s \| (\S+) TFLOP/s \| MFU (\S+)% \| HFU (\S+)% \| ETA ")


def test_training_reports_mfu_in_the_log_and_tensorboard(make_config, capsys):
    # Two training chunks (evaluation after each), recomputed blocks, a declared peak.
    path = make_config("mfu", train_steps=4, iterations=2, eval_steps=1, recompute_grad=True)
    assert run_main("--model", path, "--peak_tflops", "0.5", "--steps_per_checkpoint", "2") == 0
    out = capsys.readouterr().out
    assert out.count("MFU against 0.5 TFLOP/s: --peak_tflops 0.5 for the machine") == 1
    config = load_config(path)
    model_flops = flops.model_flops_per_token(config.model)
    hardware_flops = flops.hardware_flops_per_token(config.model)
    rates, mfu = scalars(config.model_path, "tokens_per_sec"), scalars(config.model_path, "mfu")
    assert sorted(rates) == sorted(mfu) == [2, 4]
    lines = [LOG_LINE.search(line) for line in out.splitlines() if " tokens/s" in line]
    assert [int(m.group(1)) for m in lines] == [2, 4]
    for m in lines:
        step, tokens_per_sec, tflops, mfu_percent, hfu_percent = (float(g) for g in m.groups())
        assert mfu[step] == pytest.approx(rates[step] * model_flops / 0.5e12, rel=1e-5)
        assert tokens_per_sec == pytest.approx(rates[step], abs=0.5)
        assert tflops == pytest.approx(rates[step] * model_flops / 1e12, rel=5e-3)
        assert mfu_percent == pytest.approx(100 * mfu[step], rel=5e-3)
        assert hfu_percent == pytest.approx(100 * mfu[step] * hardware_flops / model_flops, rel=5e-3)


def test_without_a_peak_on_cpu_mfu_is_not_reported(make_config, capsys):
    path = make_config("no_peak", train_steps=2, iterations=2)
    assert run_main("--model", path) == 0
    out = capsys.readouterr().out
    assert out.count("MFU not reported: no peak FLOP/s known for cpu (pass --peak_tflops)") == 1
    [line] = [line for line in out.splitlines() if "tokens/s" in line]
    assert re.search(r"step 2/\d+ \| .* \| \d+ tokens/s \| \S+ TFLOP/s \| ETA ", line)
    model_path = json.load(open(path))["model_path"]
    assert sorted(scalars(model_path, "tokens_per_sec")) == [2] and scalars(model_path, "mfu") == {}

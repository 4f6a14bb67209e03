"""--auto_layout and --auto_layout_and_mesh_shape (trainer/auto_layout.py): the cost model counts what
mesh-tf's own lowering counts, simple cases get the layouts one would choose by hand, and the shipped
configs get layouts that pass validation and preflight, printed deterministically with status 0."""
import collections
import os
import re
import subprocess
import sys

from conftest import REPO, make, run_main

from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.trainer import auto_layout
from gpt_neo_mtf.trainer.config import load_config, parse_layout, parse_mesh_shape
from gpt_neo_mtf.trainer.memory import USABLE, DeviceMemory, estimate, lifetimes
from gpt_neo_mtf.trainer.preflight import preflight
from gpt_neo_mtf.trainer.step import symbolic

MEGATRON = "heads:x,vocab:x,intermediate_expanded:x"


def small(mesh_shape="x:2", layout="", **overrides):
    """A 2-layer global/local model, its layout left to the search."""
    sizes = dict(n_embd=256, n_head=8, n_layer=2, n_ctx=256, n_vocab=1024, local_attention_radius=64,
                 attention_types=[[["global", "local"], 1]], train_batch_size=16)
    return make(mesh_shape=mesh_shape, layout=layout, **dict(sizes, **overrides))


def runs(microbatches):
    """How often the TF ops being created run in a step: once per microbatch inside the microbatch
    loop (a tf.while_loop), else once."""
    return microbatches if tf.get_default_graph()._get_control_flow_context() else 1


class CountingMesh(mtf.placement_mesh_impl.PlacementMeshImpl):
    """The CPU placement mesh, adding up the laid-out elements of the collectives it is asked for
    (as mesh-tf's counters do: all-reduce and all-concat results, all-to-all inputs), each as often as
    it runs."""

    def __init__(self, mesh_shape, layout, devices, microbatches):
        super().__init__(mtf.convert_to_shape(mesh_shape), mtf.convert_to_layout_rules(layout),
                         ["/cpu:%d" % i for i in range(devices)])
        self.sent = collections.Counter()
        self.microbatches = microbatches

    def _count(self, kind, laid_out_tensor):
        elements = self.size * runs(self.microbatches)
        for n in laid_out_tensor.slice_shape:
            elements *= n
        self.sent[kind] += elements

    def allreduce(self, x, mesh_axes, reduction_fn_string):
        y = super().allreduce(x, mesh_axes, reduction_fn_string)
        self._count("allreduce", y)
        return y

    def allconcat(self, x, mesh_axis, concat_axis):
        y = super().allconcat(x, mesh_axis, concat_axis)
        self._count("allconcat", y)
        return y

    def alltoall(self, x, mesh_axis, split_axis, concat_axis):
        self._count("alltoall", x)
        return super().alltoall(x, mesh_axis, split_axis, concat_axis)

    def receive(self, x, mesh_axis, source_pcoord):
        self._count("receive", x)
        return super().receive(x, mesh_axis, source_pcoord)


class CountingLowering(mtf.Lowering):
    """mesh-tf's lowering, counting each counter (einsum work, ...) as often as it runs."""

    def __init__(self, graph, mesh_impls, microbatches):
        self.microbatches = microbatches
        super().__init__(graph, mesh_impls, autostack=False)

    def add_counter(self, key, value):
        super().add_counter(key, value * runs(self.microbatches))


def test_costs_count_the_collectives_of_a_real_lowering():
    """Einsum work (mesh-tf's own counter) and every collective the lowering of the training step
    over 4 CPU devices issues: all-reduces (also those mesh-tf delays past additions of partial sums,
    and the embedding lookups') and all-concats; with 2 microbatches those in the loop twice, except the
    gradients' all-reduce, which mesh-tf delays until after the loop. With and without `chunked_loss`."""
    for mesh_shape, layout, tokens_per_mb, chunked_loss, collectives in (
            ("x:2,y:2", "batch:x,heads:y,vocab:y,intermediate_expanded:y", None, False, {"allreduce"}),
            ("x:2,y:2", "batch:x,embd:y,memory_length:y", None, False, {"allreduce", "allconcat"}),
            ("x:2,y:2", "batch:x,heads:y,vocab:y,intermediate_expanded:y", 16, False, {"allreduce"}),
            # The chunked loss's own einsums and all-reduces, over a split vocab, a split embd, and in the loop.
            ("x:2,y:2", "batch:x,heads:y,vocab:y,intermediate_expanded:y", None, True, {"allreduce"}),
            ("x:2,y:2", "batch:x,embd:y,memory_length:y", None, True, {"allreduce", "allconcat"}),
            ("x:2,y:2", "batch:x,heads:y,vocab:y,intermediate_expanded:y", 16, True, {"allreduce"})):
        config = make(mesh_shape, layout, n_ctx=16, local_attention_radius=4, train_batch_size=4,
                      tokens_per_mb_per_replica=tokens_per_mb, chunked_loss=chunked_loss)
        step = symbolic(config)
        ours = auto_layout.StepOperations(step).costs(parse_mesh_shape(mesh_shape), parse_layout(layout)).counters
        mesh = CountingMesh(mesh_shape, layout, 4, step.microbatches)
        del step.graph.operations[step.passes:]  # the optimizer's update, which the costs leave out
        with step.tf_graph.as_default():
            lowering = CountingLowering(step.graph, {step.loss.mesh: mesh}, step.microbatches)
            for tensor in (step.loss,) + step.grads:  # what the optimizer and the loss's export read
                lowering.tensors[tensor].to_laid_out_tensor()
        assert set(mesh.sent) == collectives
        expected = {kind: mesh.sent[kind] for kind in ("allreduce", "allconcat", "alltoall")}
        expected["einsum"] = sum(value for key, value in lowering.counters if key == "einsum")
        assert ours == expected


def test_data_parallel_when_every_device_gets_many_sequences():
    """8 sequences per device: all-reducing the gradients once costs less than all-reducing
    activations in every layer, and splitting the batch halves all the work."""
    choice = auto_layout.search(small(train_batch_size=16))
    assert (choice.mesh_shape_string, choice.layout_string, choice.fits) == ("x:2", "batch:x", True)


def test_megatron_layout_when_the_batch_cannot_be_split():
    """One sequence: attention heads, MLP hidden units and GPT-2's vocabulary (padded to 50304 as in the
    original's configs) split, as Megatron-LM's tensor parallelism; the width stays whole, since
    splitting it all-reduces every projection. A vocabulary of 1024 stays whole: its logits cost less
    to compute on every device than the all-reduce of the embedding lookup a split table needs."""
    choice = auto_layout.search(small(train_batch_size=1, n_vocab=50304))
    assert choice.layout_string == MEGATRON
    assert choice.costs.bytes_sent > 0 and choice.costs.flops > 0
    assert auto_layout.search(small(train_batch_size=1)).layout_string == "heads:x,intermediate_expanded:x"


def test_mesh_shape_search_combines_data_and_model_parallelism():
    """4 devices, 2 sequences: the batch splits 2 ways and the model over the other 2."""
    choice = auto_layout.search(small("x:4", train_batch_size=2), with_mesh_shape=True)
    assert choice.mesh_shape_string == "x:2,y:2"
    assert choice.layout_string == "batch:x,heads:y,vocab:y,intermediate_expanded:y"


def test_device_memory_rules_out_layouts_that_do_not_fit():
    """Data parallelism is cheapest here but keeps all weights and optimizer slots on each device; with
    memory for the Megatron layout's half of them only, that one is chosen; with less memory still,
    the layout needing the least."""
    config = small(n_embd=512, n_vocab=8192, train_batch_size=16)
    step = lifetimes(symbolic(config))
    data_parallel, megatron = (DeviceMemory(step, "x:2", layout).at().total for layout in ("batch:x", MEGATRON))
    assert megatron < data_parallel
    assert auto_layout.search(config).layout_string == "batch:x"
    between = auto_layout.search(config, device_memory=(megatron + data_parallel) / 2 / USABLE)
    assert (between.layout_string, between.memory, between.fits) == (MEGATRON, megatron, True)
    too_small = auto_layout.search(config, device_memory=megatron / 2)
    assert (too_small.layout_string, too_small.fits) == (MEGATRON, False)
    assert "no candidate fits" in auto_layout.describe(config, too_small, False, megatron / 2)[-1]


def test_each_candidate_runs_its_own_microbatches():
    """tokens_per_mb_per_replica fixes a microbatch's tokens per replica, so how many microbatches a step runs
    depends on the batch's split: each candidate is measured and priced with its own, and the choice's memory
    is the estimate of the config it makes. With memory for data parallelism's microbatches, no layout fits
    whole batches."""
    whole = small("x:4", train_batch_size=8)
    microbatched = small("x:4", train_batch_size=8, tokens_per_mb_per_replica=256)
    data_parallel = estimate(small("x:4", "batch:x", train_batch_size=8, tokens_per_mb_per_replica=256)).at().total
    assert estimate(small("x:4", "batch:x", train_batch_size=8)).at().total > data_parallel
    for config in (whole, microbatched):
        choice = auto_layout.search(config, with_mesh_shape=True, device_memory=data_parallel / USABLE)
        chosen = small(choice.mesh_shape_string, choice.layout_string, train_batch_size=8,
                       tokens_per_mb_per_replica=config.train.tokens_per_mb_per_replica)
        assert choice.memory == estimate(chosen).at().total
        assert choice.fits == (choice.layout_string == "batch:x") == (config is microbatched)


def printed(out):
    """{"mesh_shape": ..., "layout": ...} from the two config lines main.py prints."""
    lines = [line for line in out.splitlines() if line.startswith('"')]
    assert len(lines) == 2
    return dict(line.rstrip(",").replace('"', "").split(": ") for line in lines)


def assert_usable(name, choice, devices):
    config = load_config(name, choice)
    assert config.mesh.size == devices  # and it loaded: validation passed
    for mode in ("train", "eval", "predict"):
        preflight(config, mode)
    return config


def test_gpt_neo_125M_on_8_devices(capsys):
    assert run_main("--model", "gpt_neo_125M", "--mesh_shape", "x:8", "--auto_layout") == 0
    captured = capsys.readouterr()
    choice = printed(captured.out)
    assert choice["mesh_shape"] == "x:8"
    assert_usable("gpt_neo_125M", choice, 8)
    # 512 sequences of 2048 tokens do not fit 8 devices of 16 GiB in any layout: the least memory is chosen.
    assert "no candidate fits" in captured.out and captured.err == ""

    assert run_main("--model", "gpt_neo_125M", "--auto_layout_and_mesh_shape") == 0
    assert_usable("gpt_neo_125M", printed(capsys.readouterr().out), 8)


def test_cpu_mesh8_and_the_same_output_under_any_hash_seed(capsys):
    assert run_main("--model", "cpu_mesh8", "--auto_layout") == 0
    choice = printed(capsys.readouterr().out)
    assert choice["mesh_shape"] == "x:2,y:4"
    assert_usable("cpu_mesh8", choice, 8)
    # The command users run, under two Python hash seeds (set orders differ between them).
    outputs = []
    for seed in ("1", "2"):
        result = subprocess.run([sys.executable, "main.py", "--model", "cpu_mesh8", "--auto_layout_and_mesh_shape"],
                                cwd=REPO, env=dict(os.environ, PYTHONHASHSEED=seed), capture_output=True, text=True)
        assert (result.returncode, result.stderr) == (0, "")
        assert_usable("cpu_mesh8", printed(result.stdout), 8)
        # Log lines start with the time (and date).
        outputs.append([re.sub(r"^(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d ", "", line)
                        for line in result.stdout.splitlines()])
    assert outputs[0] == outputs[1]

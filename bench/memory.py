"""Memory per device of a training step, on paper (see trainer/memory.py for what is counted).

    python bench/memory.py --model gpt_neo_2-7B [--mesh_shape x:32,y:8 --layout batch:x,embd:y]
                           [--train_batch_size 256] [--tokens_per_mb_per_replica 2048] [--recompute_grad]
                           [--precision bfloat16] [--device_memory_gib 16]
    python bench/memory.py --table

With --model: parameters, optimizer state, gradients and activations per device for the config's
(or the given) mesh_shape and layout, the largest tensors alive at the activations' peak, and the
largest train_batch_size (with microbatches: tokens_per_mb_per_replica) that fits in --device_memory_gib.

With --table: docs/layouts-and-memory.md's table of how to train the released and the original's
largest configs, their own batch, on TPU v3/v4 slices and A100s. The layout is what
--auto_layout_and_mesh_shape chooses (trainer.auto_layout.search) for the target's devices and memory:
for the config as it is if some layout fits, else with recompute_grad, else with recompute_grad and
microbatches, first of one sequence per replica (the least memory), then the largest that fits on
the layout chosen for those. Every row is checked to load as a config (validation) and to pass
preflight on its target. Takes about 15 minutes.
"""
import argparse
import sys
from dataclasses import dataclass

from gpt_neo_mtf.trainer import auto_layout
from gpt_neo_mtf.trainer.config import PRECISIONS, ConfigError, load_config
from gpt_neo_mtf.trainer.memory import GiB, USABLE, estimate, largest_microbatch
from gpt_neo_mtf.trainer.preflight import Device, preflight


@dataclass(frozen=True)
class Target:
    """Hardware to train on: one mesh position per device."""

    name: str
    devices: int          # mesh positions: TPU cores (v3), chips (v4), GPUs
    device_memory: int    # bytes per device


TARGETS = (
    Target("TPU v3-8", 8, 16 * GiB),
    Target("TPU v3-32", 32, 16 * GiB),
    Target("TPU v3-256", 256, 16 * GiB),
    Target("TPU v4-32", 16, 32 * GiB),
    Target("TPU v4-256", 128, 32 * GiB),
    Target("1x A100 40GB", 1, 40 * GiB),
    Target("8x A100 40GB", 8, 40 * GiB),
    Target("1x A100 80GB", 1, 80 * GiB),
    Target("8x A100 80GB", 8, 80 * GiB),
)
TABLE_CONFIGS = ("gpt_neo_125M", "gpt_neo_1-3B", "gpt_neo_2-7B", "gpt3_6-7B_256", "gpt3_13B_256")


def size(n):
    return "%.2f GiB" % (n / GiB) if n >= GiB else "%.1f MiB" % (n / 2 ** 20)


def describe(args):
    overrides = {k: v for k, v in (("mesh_shape", args.mesh_shape), ("layout", args.layout),
                                   ("train_batch_size", args.train_batch_size), ("precision", args.precision),
                                   ("tokens_per_mb_per_replica", args.tokens_per_mb_per_replica)) if v is not None}
    if args.recompute_grad:
        overrides["recompute_grad"] = True
    config = load_config(args.model, overrides)
    device = estimate(config)
    memory = device.at()
    budget = int(USABLE * args.device_memory_gib * GiB)
    microbatched = config.train.tokens_per_mb_per_replica
    print("%s: mesh_shape %s, layout %r, recompute_grad %s, precision %s" % (
        config.name, config.mesh.shape_string, config.mesh.layout_string, config.model.recompute_grad,
        config.model.precision))
    print("train_batch_size %d = %d sequences per device%s x %d-way batch split" % (
        config.train.train_batch_size, config.train.train_batch_size // device.batch_split,
        " in microbatches of %d" % memory.batch_per_device if microbatched else "", device.batch_split))
    print("per device:")
    for label, value in (("parameters", memory.parameters), ("optimizer", memory.optimizer),
                         ("gradients", memory.gradients), ("activations (peak)", memory.activations),
                         ("  of which kept for backward", memory.kept_for_backward), ("total", memory.total)):
        print("  %-30s %12s" % (label, size(value)))
    if microbatched:
        largest = "tokens_per_mb_per_replica that does: %s" % largest_microbatch(config, budget)
    else:
        largest = "train_batch_size that does: %d" % (device.max_batch_per_device(budget) * device.batch_split)
    print("fits in %.0f%% of %g GiB: %s; largest %s" % (
        100 * USABLE, args.device_memory_gib, "yes" if memory.total <= budget else "no", largest))
    print("largest tensors at the activations' peak:")
    for name, bytes_ in device.largest_tensors():
        print("  %-60s %12s" % (name, size(bytes_)))


def recommend(config, target, steps):
    """(config with the recommended mesh_shape, layout, recompute_grad and tokens_per_mb_per_replica, whether
    it fits `target`); `steps`: {(recompute_grad, tokens_per_mb_per_replica): auto_layout.Steps}, shared
    between the targets of one config."""
    budget = USABLE * target.device_memory

    def search(recompute_grad, tokens_per_mb_per_replica):
        keys = dict(mesh_shape="x:%d" % target.devices, layout="", recompute_grad=recompute_grad,
                    tokens_per_mb_per_replica=tokens_per_mb_per_replica)
        variant = load_config(config.name, keys)
        choice = auto_layout.search(variant, True, target.device_memory,
                                    steps.setdefault((recompute_grad, tokens_per_mb_per_replica), auto_layout.Steps()))
        return load_config(config.name, dict(keys, mesh_shape=choice.mesh_shape_string, layout=choice.layout_string)), \
            choice.fits

    for recompute_grad in (False, True):  # recompute_grad costs another forward pass
        chosen, fits = search(recompute_grad, None)
        if fits:
            return chosen, True
    chosen, fits = search(True, config.model.n_ctx)
    if not fits:
        return chosen, False
    tokens = largest_microbatch(chosen, budget)
    return load_config(config.name, dict(mesh_shape=chosen.mesh.shape_string, layout=chosen.mesh.layout_string,
                                         recompute_grad=True, tokens_per_mb_per_replica=tokens)), True


def table():
    print("| config | hardware | mesh_shape | layout | recompute_grad | tokens_per_mb_per_replica | params | optimizer "
          "| gradients | activations | total (of device) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in TABLE_CONFIGS:
        config, steps = load_config(name), {}
        for target in TARGETS:
            chosen, fits = recommend(config, target, steps)
            m = estimate(chosen).at()
            if fits:  # a recommendation passes preflight like any other config
                preflight(chosen, device=Device(target.device_memory, target.name))
            tokens = chosen.train.tokens_per_mb_per_replica
            print("| %s | %s | `%s` | `%s` | %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f (%.0f%%)%s |" % (
                name, target.name, chosen.mesh.shape_string, chosen.mesh.layout_string or '""',
                "yes" if chosen.model.recompute_grad else "no", tokens or "whole batches", m.parameters / GiB,
                m.optimizer / GiB, m.gradients / GiB, m.activations / GiB, m.total / GiB,
                100 * m.total / target.device_memory, "" if fits else ", none fits"), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="print docs/layouts-and-memory.md's memory table")
    parser.add_argument("--model", help="a config name in configs/ or a path ending in .json")
    parser.add_argument("--mesh_shape", help="instead of the config's")
    parser.add_argument("--layout", help="instead of the config's")
    parser.add_argument("--train_batch_size", type=int, help="instead of the config's")
    parser.add_argument("--tokens_per_mb_per_replica", type=int, help="instead of the config's: microbatches")
    parser.add_argument("--recompute_grad", action="store_true", help="recompute each block in the backward pass")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), help="instead of the config's")
    parser.add_argument("--device_memory_gib", type=float, default=16.0,
                        help="memory of one device (default: a TPU v3 core)")
    args = parser.parse_args(argv)
    if args.table == bool(args.model):
        parser.error("give either --model or --table")
    try:
        table() if args.table else describe(args)
    except ConfigError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

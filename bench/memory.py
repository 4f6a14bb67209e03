"""Memory per device of a training step, on paper (see trainer/memory.py for what is counted).

    python bench/memory.py --model gpt_neo_2-7B [--mesh_shape x:32,y:8 --layout batch:x,embd:y]
                           [--train_batch_size 256] [--recompute_grad] [--precision bfloat16]
                           [--device_memory_gib 16]
    python bench/memory.py --table

With --model: parameters, optimizer state, gradients and activations per device for the config's
(or the given) mesh_shape and layout, the largest tensors alive at the activations' peak, and the
largest train_batch_size that fits in --device_memory_gib. --precision bfloat16 estimates the
original's bfloat16 mode, which the trainer does not support yet.

With --table: the README's table of recommended mesh_shape/layout/recompute_grad for the released
and the original's largest configs on TPU v3/v4 slices and A100s (trainer.memory.recommend). Every
recommendation is checked to load as a config (validation) and to pass preflight. Takes a few
minutes: each config's training step is built twice (with and without recompute_grad).
"""
import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from trainer.config import PRECISIONS, ConfigError, load_config  # noqa: E402
from trainer.memory import (GiB, TARGETS, USABLE, DeviceMemory, recommend,  # noqa: E402
                            training_step, training_steps)
from trainer.preflight import preflight  # noqa: E402

# The table's configs and the keys they change: the original trained 13B in bfloat16 with
# microbatches, which the estimate does not model, so its row is float32 whole batches.
TABLE_CONFIGS = (
    ("gpt_neo_125M", {}),
    ("gpt_neo_1-3B", {}),
    ("gpt_neo_2-7B", {}),
    ("gpt3_6-7B_256", {}),
    ("gpt3_13B_256", {"precision": None, "tokens_per_mb_per_replica": None}),
)


def gib(n):
    return "%.2f" % (n / GiB)


def size(n):
    return "%.2f GiB" % (n / GiB) if n >= GiB else "%.1f MiB" % (n / 2 ** 20)


def describe(args):
    overrides = {k: v for k, v in (("mesh_shape", args.mesh_shape), ("layout", args.layout),
                                   ("train_batch_size", args.train_batch_size)) if v is not None}
    if args.recompute_grad:
        overrides["recompute_grad"] = True
    config = load_config(args.model, overrides)
    device = DeviceMemory(training_step(config, args.precision), config.mesh.shape_string, config.mesh.layout_string)
    memory = device.at()
    budget = int(USABLE * args.device_memory_gib * GiB)
    print("%s: mesh_shape %s, layout %r, recompute_grad %s, precision %s" % (
        config.name, config.mesh.shape_string, config.mesh.layout_string, config.model.recompute_grad,
        args.precision))
    print("train_batch_size %d = %d sequences per device x %d-way batch split" % (
        config.train.train_batch_size, memory.batch_per_device, device.batch_split))
    print("per device:")
    for label, value in (("parameters", memory.parameters), ("optimizer", memory.optimizer),
                         ("gradients", memory.gradients), ("activations (peak)", memory.activations),
                         ("  of which kept for backward", memory.kept_for_backward), ("total", memory.total)):
        print("  %-30s %12s" % (label, size(value)))
    print("fits in %.0f%% of %g GiB: %s; largest train_batch_size that does: %d" % (
        100 * USABLE, args.device_memory_gib, "yes" if memory.total <= budget else "no",
        device.max_batch_per_device(budget) * device.batch_split))
    print("largest tensors at the activations' peak:")
    for name, bytes_ in device.largest_tensors():
        print("  %-60s %12s" % (name, size(bytes_)))


def table():
    print("| config | hardware | mesh_shape | layout | recompute_grad | train_batch_size | params | optimizer "
          "| gradients | activations | total (of device) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, overrides in TABLE_CONFIGS:
        config = load_config(name, overrides)
        steps = training_steps(config)
        for target in TARGETS:
            r = recommend(config, target, steps)
            c, m = r.config, r.memory
            # The recommendation must load as a config and pass preflight like any other.
            preflight(load_config(name, dict(overrides, mesh_shape=c.mesh.shape_string, layout=c.mesh.layout_string,
                                             recompute_grad=c.model.recompute_grad,
                                             train_batch_size=c.train.train_batch_size)))
            if r.fits:
                batch = "%d" % c.train.train_batch_size
            elif m.total <= USABLE * target.device_memory:
                batch = "%d (%d does not fit)" % (c.train.train_batch_size, config.train.train_batch_size)
            else:
                batch = "none fits (shown: %d, 1 per %s)" % (c.train.train_batch_size, target.device)
            print("| %s | %s | `%s` | `%s` | %s | %s | %s | %s | %s | %s | %s (%.0f%%) |" % (
                name, target.name, c.mesh.shape_string, c.mesh.layout_string,
                "yes" if c.model.recompute_grad else "no", batch, gib(m.parameters), gib(m.optimizer),
                gib(m.gradients), gib(m.activations), gib(m.total), 100 * m.total / target.device_memory))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", action="store_true", help="print the README's table of recommended layouts")
    parser.add_argument("--model", help="a config name in configs/ or a path ending in .json")
    parser.add_argument("--mesh_shape", help="instead of the config's")
    parser.add_argument("--layout", help="instead of the config's")
    parser.add_argument("--train_batch_size", type=int, help="instead of the config's")
    parser.add_argument("--recompute_grad", action="store_true", help="recompute each block in the backward pass")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="float32")
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

"""What distillation costs on CPU: a distillation step against a plain step of the same student, and
against the teacher's forward pass alone (the extra work a distillation step does).

    python bench/distill.py [--n_ctx 256] [--batch 1] [--teacher_layers 12] [--student_layers 12]
                            [--student_embd 192] [--steps 3] [--warmup 1]

The teacher is the 125M shape (n_embd 768, 12 heads, vocab 50257); the student the same with
n_embd --student_embd (a quarter by default) and 4 heads. Weights are random (nothing is read), float32,
Adam; token ids are random. Three graphs, each in its own session with 2 intra- and inter-op threads,
run one after another in this process:

1. student: trainer.step.objective of the student alone and the optimizer's update (what model_fn runs);
2. distill: the same with the teacher (`distill_alpha` 0.5, T 2, top-k 0);
3. teacher: the teacher's forward pass alone (trainer.distill.teacher_logits, summed to a scalar).

Each is timed over --steps session runs after --warmup; the median is shown, with the FLOPs per token
trainer/flops.py counts for it. Expect distill ≈ student + teacher: the teacher runs forward only.
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from common import THREADS, VOCAB, machine, raw_config

from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.trainer import distill, flops
from gpt_neo_mtf.trainer.config import build_config
from gpt_neo_mtf.trainer.optimizer import minimize
from gpt_neo_mtf.trainer.step import objective


def configs(args, directory):
    """(student config without a teacher, the same distilling from the teacher)."""
    teacher = dict(raw_config(args.n_ctx, args.teacher_layers), train_batch_size=args.batch)
    teacher_path = os.path.join(directory, "teacher.json")
    with open(teacher_path, "w") as f:
        json.dump(teacher, f)
    student = dict(raw_config(args.n_ctx, args.student_layers), n_embd=args.student_embd, n_head=4,
                   train_batch_size=args.batch)
    plain = build_config(student, "student", [])
    distilling = build_config(dict(student, distill_teacher=teacher_path, distill_teacher_checkpoint="/unused",
                                   distill_alpha=0.5, distill_temperature=2.0), "distill", [])
    return plain, distilling


def step_time(config, kind, args):
    """Median seconds of one session run of `kind` ("student", "distill" or "teacher")."""
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "mesh")
        shape = mtf.Shape([mtf.Dimension("batch", args.batch), mtf.Dimension("sequence", args.n_ctx)])
        rng = np.random.RandomState(0)
        ids, targets = (mtf.import_fully_replicated(mesh, tf.constant(rng.randint(0, VOCAB, shape.to_integer_list),
                                                                      tf.int32), shape) for _ in range(2))
        if kind == "teacher":
            outputs = [mtf.reduce_sum(distill.teacher_logits(ids, config))]
        else:
            loss, grads, _ = objective(config, ids, targets)
            outputs, _, _ = minimize(grads, graph.trainable_variables, config.train, tf.constant(0, tf.int64))
        impl = mtf.placement_mesh_impl.PlacementMeshImpl(mtf.convert_to_shape("all:1"),
                                                          mtf.convert_to_layout_rules(""), ["/cpu:0"])
        lowering = mtf.Lowering(graph, {mesh: impl})
        run = [lowering.export_to_tf_tensor(x) for x in outputs] if kind == "teacher" else \
            [lowering.lowered_operation(op) for op in outputs]
        session_config = tf.ConfigProto(intra_op_parallelism_threads=THREADS, inter_op_parallelism_threads=THREADS)
        with tf.Session(config=session_config) as session:
            session.run(tf.global_variables_initializer())
            session.run(lowering.copy_masters_to_slices())
            seconds = []
            for i in range(args.warmup + args.steps):
                started = time.perf_counter()
                session.run(run)
                if i >= args.warmup:
                    seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n_ctx", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--teacher_layers", type=int, default=12)
    p.add_argument("--student_layers", type=int, default=12)
    p.add_argument("--student_embd", type=int, default=192)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args(argv)
    print(machine("bench/distill.py"))
    with tempfile.TemporaryDirectory() as directory:
        plain, distilling = configs(args, directory)
    tokens = args.batch * args.n_ctx
    rows = [("student step", plain, "student", flops.step_flops_per_token(plain)),
            ("distillation step", distilling, "distill", flops.step_flops_per_token(distilling)),
            ("teacher forward", distilling, "teacher", flops.teacher_flops_per_token(distilling))]
    print("teacher: %d layers, n_embd 768; student: %d layers, n_embd %d; %d tokens per step (n_ctx %d x batch %d)"
          % (args.teacher_layers, args.student_layers, args.student_embd, tokens, args.n_ctx, args.batch))
    times = {}
    print("%-18s %10s %12s %14s" % ("", "s/step", "tokens/s", "GFLOP/token"))
    for label, config, kind, per_token in rows:
        times[kind] = step_time(config, kind, args)
        print("%-18s %10.3f %12.0f %14.3f" % (label, times[kind], tokens / times[kind], per_token / 1e9), flush=True)
    print("distillation step / student step: %.2f (FLOPs: %.2f); distillation step - student step = %.2f x the "
          "teacher's forward" % (times["distill"] / times["student"],
                                 flops.step_flops_per_token(distilling) / flops.step_flops_per_token(plain),
                                 (times["distill"] - times["student"]) / times["teacher"]))


if __name__ == "__main__":
    sys.exit(main())

"""Training on a cluster of processes (--cluster, docs/clusters.md) on this machine's loopback: step time
and bytes moved between the tasks per step, for 1, 2 and 3 processes of one CPU device each, next to the
layout's analytic collective volume.

    python bench/cluster.py [--tasks 1,2,3] [--warmup 3] [--steps 20] [--n_embd 64] [--n_layer 2]

One small config (vocab 1024, n_ctx 64, batch 6, adam), mesh x:N with layout batch:x (data parallelism:
every device holds the whole model and the gradients are all-reduced each step). Each process is a real
`main.py` (the chief with --cluster, the others --worker). The row "1, no --cluster" is the same run in
one process without the distributed runtime.

Measured, for the steps after --warmup:
- step time: wall seconds between the chief's training-log lines of step `warmup` and of step
  `warmup + steps`, divided by the steps in between (the log is polled every 5 ms);
- bytes/step between tasks: the growth of bytes sent and received on the servers' ends of every TCP
  connection to a task's port (`ss -tin`: bytes_acked + bytes_received of sockets whose local port is a
  task's), over the same steps. It counts the tensors mesh-tf's collectives and the input slices move, and
  the gRPC framing and the per-step RunGraph calls of the distributed master.
- analytic: the bytes all devices together send in the step's collectives under the layout (trainer/
  auto_layout.py's count, ring all-reduce 2(g-1)/g of each gradient), which excludes the input slices
  and the runtime's own messages.

On one machine with 2 cores, the processes share the cores and loopback is memory-to-memory, so the
table measures the runtime's overhead, not how training scales across machines.
"""
import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
from common import REPO, THREAD_ENV, machine

VOCAB = 1024


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_data(workdir, n_ctx, count):
    """Random-id TFRecords and their dataset config "synthetic" in workdir."""
    from gpt_neo_mtf.storage import tfrecords_name
    from gpt_neo_mtf.tfrecords_tools.records import RecordWriter

    rng = np.random.RandomState(1234)
    records = os.path.join(workdir, "records")
    os.makedirs(records)
    writer = RecordWriter(os.path.join(records, "synthetic.tmp"))
    for _ in range(count):
        writer.add(rng.randint(0, VOCAB, size=n_ctx + 1).tolist())
    writer.finish(os.path.join(records, tfrecords_name("synthetic", 0, count)))
    os.makedirs(os.path.join(workdir, "dataset_configs"))
    with open(os.path.join(workdir, "dataset_configs", "synthetic.json"), "w") as f:
        json.dump({"n_vocab": VOCAB, "path": os.path.join(records, "*.tfrecords"), "tokenizer_path": "gpt2",
                   "eos_id": VOCAB - 1, "padding_id": VOCAB - 1}, f)


def write_config(workdir, args, tasks, name):
    raw = dict(n_ctx=args.n_ctx, n_embd=args.n_embd, n_head=4, n_layer=args.n_layer, n_vocab=VOCAB,
               attention_types=[[["global"], args.n_layer]], mesh_shape="x:%d" % tasks, layout="batch:x",
               model_path=os.path.join(workdir, name), train_batch_size=args.batch,
               train_steps=args.warmup + args.steps,
               iterations=1, lr=1e-3, opt_name="adam", weight_decay=0.01, gradient_clipping=1.0,
               datasets=[["synthetic", None, None, None]])
    path = os.path.join(workdir, name + ".json")
    with open(path, "w") as f:
        json.dump(raw, f)
    return path


def analytic_bytes(config_path):
    """Bytes all devices send in one step's collectives (trainer/auto_layout.py's count)."""
    from gpt_neo_mtf.trainer.auto_layout import Steps
    from gpt_neo_mtf.trainer.config import load_config

    config = load_config(config_path, {})
    costs = Steps()(config)[0].costs(config.mesh.mesh_shape, config.mesh.layout)
    return costs.bytes_sent * config.mesh.size


def task_bytes(ports):
    """Bytes moved so far on the server ends of the established connections to `ports`."""
    out = subprocess.run(["ss", "-tinH", "state", "established"], stdout=subprocess.PIPE, text=True).stdout
    total = 0
    local_port = None
    for line in out.splitlines():
        addresses = re.match(r"^(?:[A-Z-]+\s+)?\d+\s+\d+\s+\S+:(\d+)\s+\S+:\d+", line)
        if addresses:
            local_port = int(addresses.group(1))
            continue
        if local_port in ports:
            for key in ("bytes_acked", "bytes_received"):
                found = re.search(r"\b%s:(\d+)" % key, line)
                total += int(found.group(1)) if found else 0
            local_port = None
    return total


def last_step(log_path):
    with open(log_path) as f:
        steps = re.findall(r"^\S+ \S+ step (\d+)/\d+ \|", f.read(), re.M)
    return int(steps[-1]) if steps else 0


def measure(workdir, args, tasks, use_cluster):
    name = "n%d%s" % (tasks, "c" if use_cluster else "")
    config = write_config(workdir, args, tasks, name)
    env = dict(os.environ, PYTHONUNBUFFERED="1", **THREAD_ENV)
    main = [sys.executable, os.path.join(REPO, "main.py")]
    workers, ports = [], []
    command = main + ["--model", config, "--steps_per_checkpoint", str(args.warmup + args.steps + 1)]
    if use_cluster:
        ports = free_ports(tasks)
        cluster = os.path.join(workdir, name + "_cluster.json")
        with open(cluster, "w") as f:
            json.dump({"tasks": [{"address": "127.0.0.1:%d" % p} for p in ports], "shared_model_path": True,
                       "chief_timeout_secs": 2}, f)
        for i in range(1, tasks):
            with open(os.path.join(workdir, "%s_worker%d.log" % (name, i)), "w") as log:
                workers.append(subprocess.Popen(main + ["--worker", "--cluster", cluster, "--task", str(i)],
                                                stdout=log, stderr=subprocess.STDOUT, env=env))
        command += ["--cluster", cluster]
    log_path = os.path.join(workdir, name + ".log")
    with open(log_path, "w") as log:
        chief = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    samples = []
    try:
        for target in (args.warmup, args.warmup + args.steps):
            while last_step(log_path) < target:
                if chief.poll() is not None:
                    raise SystemExit("%s ended early:\n%s" % (name, open(log_path).read()[-3000:]))
                time.sleep(0.005)
            samples.append((time.monotonic(), last_step(log_path), task_bytes(set(ports))))
        if chief.wait() != 0:
            raise SystemExit("%s failed:\n%s" % (name, open(log_path).read()[-3000:]))
        for w in workers:
            w.wait(timeout=60)
    finally:
        for p in [chief] + workers:
            if p.poll() is None:
                p.kill()
                p.wait()
    (t0, s0, b0), (t1, s1, b1) = samples
    return {"tasks": tasks, "cluster": use_cluster, "step_s": (t1 - t0) / (s1 - s0),
            "bytes_per_step": (b1 - b0) / (s1 - s0),
            "analytic": analytic_bytes(config), "steps": s1 - s0}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="1,2,3", help="process counts to measure")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n_embd", type=int, default=64)
    p.add_argument("--n_layer", type=int, default=2)
    p.add_argument("--n_ctx", type=int, default=64)
    p.add_argument("--batch", type=int, default=6)
    args = p.parse_args(argv)
    print("# " + machine("bench/cluster.py") + " per process", flush=True)
    print("# model: n_embd %d, %d layers, n_ctx %d, vocab %d, batch %d, adam; mesh x:N, layout batch:x; %d steps "
          "timed after %d" % (args.n_embd, args.n_layer, args.n_ctx, VOCAB, args.batch, args.steps, args.warmup))
    print("# loopback on one machine: the processes share its cores, so this measures the runtime's overhead, "
          "not scaling across machines\n")
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_cluster_") as workdir:
        write_data(workdir, args.n_ctx, (args.warmup + args.steps + 2) * args.batch)
        counts = [int(n) for n in args.tasks.split(",")]
        plan = ([(1, False)] if 1 in counts else []) + [(n, True) for n in counts]
        for tasks, use_cluster in plan:
            runs.append(measure(workdir, args, tasks, use_cluster))
            print("measured %d process(es)%s" % (tasks, "" if use_cluster else " without --cluster"), flush=True)
    print("\n| processes | ms/step | bytes/step between tasks (measured) | collectives, analytic (all devices) |")
    print("|---|---|---|---|")
    for r in runs:
        print("| %d%s | %.1f | %s | %s |" % (r["tasks"], "" if r["cluster"] else ", no --cluster", 1000 * r["step_s"],
                                              "{:,.0f}".format(r["bytes_per_step"]) if r["cluster"] else "-",
                                              "{:,}".format(r["analytic"])))


if __name__ == "__main__":
    main()

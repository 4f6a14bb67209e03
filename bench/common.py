"""What the benchmarks share: the 125M shape, the thread budget, one subprocess per measurement
(so thread pools do not interfere and peak RSS is per measurement), and TF timeline summaries."""
import datetime
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from collections import defaultdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

THREADS = 2
VOCAB = 50257
# Every worker subprocess gets this thread budget: OpenMP (torch) and TensorFlow's session
# thread pools where a session does not set them itself (the estimator's does not).
THREAD_ENV = {"OMP_NUM_THREADS": str(THREADS), "TF_NUM_INTRAOP_THREADS": str(THREADS),
              "TF_NUM_INTEROP_THREADS": str(THREADS), "TF_CPP_MIN_LOG_LEVEL": "3"}


def raw_config(n_ctx, n_layer=12):
    """The original's keys for a 125M-shaped model (fewer layers if asked) with no dataset."""
    return dict(n_ctx=n_ctx, n_embd=768, n_head=12, n_layer=n_layer, n_vocab=VOCAB,
                attention_types=[[["global", "local"], n_layer // 2]], local_attention_radius=256,
                mesh_shape="x:1", layout="", model_path="/unused", train_batch_size=1, train_steps=1,
                lr=1e-4, opt_name="adam", iterations=1, datasets=[], no_dataset=True,
                scale_by_depth=True, scale_by_in=False)


def cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def emit_result(result):
    """A worker's last act: its result and its peak RSS, as the one line `run_worker` reads."""
    print("RESULT " + json.dumps(dict(result, peak_rss_mb=peak_rss_mb())), flush=True)


def run_worker(command, label):
    """Run a worker subprocess with the thread budget; its `emit_result` dict plus wall time and load."""
    env = dict(os.environ, **THREAD_ENV)
    started, load = time.time(), os.getloadavg()[0]
    proc = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit("%s failed (exit %d)" % (label, proc.returncode))
    result = json.loads(lines[-1][len("RESULT "):])
    result["wall_s"], result["load_before"], result["load_after"] = time.time() - started, load, os.getloadavg()[0]
    result["stdout"] = proc.stdout
    return result


def trace_summary(step_stats, graph, steps):
    """Op-type, per-op, per-scope and per-op-over-all-layers (gpt2/h*/...) totals (microseconds) of a
    traced run's step_stats, and the ops' first output shapes.

    `steps` is how many model steps the run held (the printed ms/step divides by it).
    """
    by_type, by_op, by_scope, by_layer_op = (defaultdict(float) for _ in range(4))
    shapes = {}
    total = 0.0
    for device in step_stats.dev_stats:
        for node in device.node_stats:
            micros = node.all_end_rel_micros
            name = node.node_name.split(":")[0]
            label = node.timeline_label
            op_type = label.split(" = ")[1].split("(")[0] if " = " in label else name
            try:
                op_type = graph.get_operation_by_name(name).type
            except (KeyError, ValueError):
                pass
            by_type[op_type] += micros
            by_op[name] += micros
            by_layer_op[re.sub(r"/h\d+/", "/h*/", name)] += micros
            if node.output:
                shapes[name] = [dim.size for dim in node.output[0].tensor_description.shape.dim]
            parts = [p for p in name.split("/") if not p.startswith("while")]
            by_scope["/".join(parts[:2]) if parts else name] += micros
            total += micros
    top = lambda table, n: [(k, v) for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:n]]  # noqa: E731
    by_op = top(by_op, 30)
    return {"total_op_us": total, "steps": steps, "by_type": top(by_type, 25), "by_op": by_op,
            "by_scope": top(by_scope, 25), "by_layer_op": top(by_layer_op, 30),
            "shapes": {name: shapes.get(name) for name, _ in by_op}}


def memory_summary(step_stats, top=25):
    """The traced step's tensors (TF's allocation records, variables not included): the peak of the bytes
    alive at once, and the largest tensors alive at that moment, each and summed over the layers (h*)."""
    events = sorted((record.alloc_micros, record.alloc_bytes, node.node_name)
                    for device in step_stats.dev_stats for node in device.node_stats
                    for memory in node.memory for record in memory.allocation_records)
    live, peak, alive, at_peak = 0, 0, defaultdict(int), {}
    for _, size, name in events:
        live += size
        alive[name] += size
        if live > peak:
            peak, at_peak = live, dict(alive)
    by_layer_op = defaultdict(int)
    for name, size in at_peak.items():
        by_layer_op[re.sub(r"/h\d+/", "/h*/", name)] += size
    largest = lambda table: [(k, v) for k, v in sorted(table.items(), key=lambda kv: -kv[1])[:top] if v > 0]  # noqa: E731
    return {"peak_bytes": peak, "by_op": largest(at_peak), "by_layer_op": largest(by_layer_op)}


def print_memory(title, summary):
    print("\n%s: %.0f MB alive at the peak" % (title, summary["peak_bytes"] / 2 ** 20))
    for heading, key in (("op, summed over layers h*", "by_layer_op"), ("op", "by_op")):
        print("  %-78s %8s" % (heading, "MB"))
        for name, size in summary[key]:
            print("  %-78s %8.1f" % (name[-78:], size / 2 ** 20))
        print()


def print_trace(title, summary):
    print("\n" + title)
    steps = summary["steps"]
    for heading, key in (("op type", "by_type"), ("scope", "by_scope"), ("op, summed over layers h*", "by_layer_op"),
                         ("op", "by_op")):
        print(("  %-78s %10s %8s %6s  %s" % (heading, "ms/step", "total s", "share",
                                             "shape" if key == "by_op" else "")).rstrip())
        for name, micros in summary[key]:
            shape = summary["shapes"].get(name) if key == "by_op" else ""
            print(("  %-78s %10.3f %8.2f %5.1f%%  %s" % (name[-78:], micros / steps / 1e3, micros / 1e6,
                                                        100 * micros / summary["total_op_us"], shape)).rstrip())
        print()


def cpu_model():
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.machine()


def instruction_sets():
    """The CPU's vector and matrix instruction sets, which decide which matmul kernels oneDNN and MKL pick."""
    with open("/proc/cpuinfo") as f:
        flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    wanted = [flag for flag in flags if flag.startswith(("avx", "amx", "fma"))]
    return "instruction sets: " + (" ".join(sorted(wanted)) or "(none of avx*, amx*, fma)")


def git_state():
    def git(*command):
        return subprocess.run(["git", "-C", REPO] + list(command), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "(not a git checkout)"
    changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return commit + (" + %d changed files" % len(changed) if changed else "")


def machine(name):
    """The line every benchmark starts with: what ran, where and when (a figure holds for this machine only)."""
    return "%s, %s: %s (%d CPUs), Python %s, repo %s, 1-min load %.2f, %d threads" % (
        name, datetime.datetime.now().isoformat(timespec="seconds"), cpu_model(), os.cpu_count(),
        platform.python_version(), git_state(), os.getloadavg()[0], THREADS)

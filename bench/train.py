"""Training throughput on CPU: our trainer vs HuggingFace GPT-Neo (PyTorch), and MFU against this CPU's peak.

    python bench/train.py [--shapes 256x4,1024x1] [--dtypes float32,bfloat16] [--n_layer 12] [--warmup 2]
                          [--steps 5] [--matmul_reps 5] [--only ours,hf] [--profile]

One run measures, each in its own subprocess (so thread pools do not interfere and peak RSS is per
measurement), all with 2 threads: TF's session pools through TF_NUM_INTRAOP_THREADS /
TF_NUM_INTEROP_THREADS (the estimator's session sets none itself) or ConfigProto(2, 2) where we
build the session, torch.set_num_threads(2), OMP_NUM_THREADS=2.

1. peak: matmul GFLOP/s of this CPU in TF and in torch, in each of --dtypes, for the model's dominant
   GEMMs at T = n_ctx·batch tokens ([T,768]x[768,768] q/k/v/o, [T,768]x[768,3072] c_fc,
   [T,768]x[768,50257] logits) and for 1024³; best of --matmul_reps after one warm-up run. The
   larger of TF's and torch's 1024³ float32 figures is "the CPU's peak" every MFU is measured against.
2. ours: `main.py --model <config> --peak_tflops <peak> --steps_per_checkpoint <all steps + 1>`, i.e. the
   trainer as a user runs it (estimator, TFRecord input pipeline, model_fn's train step, hooks), on
   TFRecords of uniform random token ids written to a temp dir beforehand. 125M shape (12 layers,
   n_embd 768, 12 heads, vocab 50257, global/local window 256), float32, opt_name adam (Adam with
   decoupled weight decay) with weight_decay 0.01, gradient_clipping 1.0, constant lr, z-loss 1e-4,
   random init, iterations 1, so the training log's tokens/s (TrainLogHook) is per step. Timed: steps
   warmup+1 .. warmup+steps, each from the end of the previous step to the end of its own (the train
   op's session.run, the hooks' fetches and the per-step summaries); graph building, initialisation,
   the step-0 and final checkpoints and the warm-up steps are not.
3. hf: transformers GPTNeoForCausalLM, same shape, dropout 0, random init, loss = model(ids,
   labels=ids).loss, backward, clip_grad_norm_(1.0), torch.optim.AdamW(weight_decay=0.01, on every
   parameter), zero_grad; the same steps timed around all of that (the token ids are made beforehand).
Each of --dtypes: float32, or bfloat16 activations: ours with `precision: bfloat16` (float32 slices
updated by Adam, bfloat16 compute), HF's forward and loss under torch.autocast("cpu", torch.bfloat16)
(float32 weights and AdamW).

tokens/s = n_ctx x batch x steps / the timed seconds; "best step" is the fastest timed step alone,
a hint of the speed on an idle machine when the load varied; "spread" is the slowest timed step over
the fastest. MFU = tokens/s x model FLOPs per token
(trainer/flops.py) / the CPU peak, for both sides.
--profile adds a TF timeline (RunMetadata FULL_TRACE) of one training step of ours at the first
shape, through the estimator with the same train op but one op at a time (1 inter-op thread, so an
op's time is its own rather than a wait behind an overlapping op), and prints the top op types,
scopes and ops, the peak of the step's tensors alive at once and the largest of them at that moment.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np
from common import (THREADS, VOCAB, emit_result, instruction_sets, machine, memory_summary, peak_rss_mb, print_memory,
                    print_trace, raw_config, run_worker, trace_summary)

LR = 6e-4
WEIGHT_DECAY = 0.01
CLIP = 1.0
DTYPES = ("float32", "bfloat16")


def parse_shapes(text):
    """"256x4,1024x1" -> [(256, 4), (1024, 1)] (n_ctx x batch)."""
    try:
        return [tuple(int(x) for x in item.split("x")) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("shapes are n_ctxxbatch, comma-separated, e.g. 256x4,1024x1") from None


def gemm_shapes(shapes):
    """(M, K, N) of the model's dominant matmuls at each shape's token count, then 1024³."""
    tokens = sorted({n_ctx * batch for n_ctx, batch in shapes})
    return [(t, 768, n) for t in tokens for n in (768, 3072, VOCAB)] + [(1024, 1024, 1024)]


def gemm_key(m, k, n, dtype):
    return "%dx%dx%d %s" % (m, k, n, dtype)


def best_rate(run, flops, reps):
    """FLOP/s of the fastest of `reps` calls of `run`, after one warm-up call."""
    run()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return flops / min(times)


def checkpoint_interval(steps):
    """Beyond the last step, so the only checkpoints (1.5 GB at full size) are the step-0 one and the final
    one the saver writes in its end(), both outside the timed steps; a periodic save would land in one."""
    return steps + 1


def training_config(n_ctx, batch, n_layer, steps, model_path, dtype, chunked_loss=False):
    """The original's keys of the benchmarked training run (and ours: `chunked_loss`)."""
    return dict(raw_config(n_ctx, n_layer), model_path=model_path, train_batch_size=batch, train_steps=steps,
                precision=dtype, chunked_loss=chunked_loss,
                iterations=1, lr=LR, weight_decay=WEIGHT_DECAY, gradient_clipping=CLIP,
                datasets=[["synthetic", None, None, None]], no_dataset=False)


# ---------------------------------------------------------------------------------------------
# Workers (one per subprocess)


def worker_peak_tf(args):
    from gpt_neo_mtf.meshtf import tf

    rates = {}
    session_config = tf.ConfigProto(intra_op_parallelism_threads=THREADS, inter_op_parallelism_threads=THREADS)
    with tf.Graph().as_default(), tf.Session(config=session_config) as session:
        for m, k, n in gemm_shapes(args.shapes):
            for dtype in args.dtypes:
                a = tf.Variable(tf.cast(tf.random.normal([m, k]), dtype))
                b = tf.Variable(tf.cast(tf.random.normal([k, n]), dtype))
                product = tf.matmul(a, b).op  # run as a target: no copy of the result out of the session
                session.run([a.initializer, b.initializer])
                rates[gemm_key(m, k, n, dtype)] = best_rate(lambda: session.run(product), 2 * m * k * n,
                                                            args.matmul_reps)
    return {"flops": rates}


def worker_peak_torch(args):
    import torch

    torch.set_num_threads(THREADS)
    rates = {}
    for m, k, n in gemm_shapes(args.shapes):
        for dtype in args.dtypes:
            a, b = (torch.randn(shape).to(getattr(torch, dtype)) for shape in ((m, k), (k, n)))
            out = torch.empty(m, n, dtype=a.dtype)
            rates[gemm_key(m, k, n, dtype)] = best_rate(lambda: torch.mm(a, b, out=out), 2 * m * k * n,
                                                        args.matmul_reps)
    return {"flops": rates}


def _write_run(workdir, args, steps):
    """A model config, its dataset config and steps x batch records of random ids; the config's path."""
    from gpt_neo_mtf.storage import tfrecords_name
    from gpt_neo_mtf.tfrecords_tools.records import RecordWriter

    rng = np.random.RandomState(1234)
    records = os.path.join(workdir, "records")
    os.makedirs(records)
    count = steps * args.batch
    writer = RecordWriter(os.path.join(records, "synthetic.tmp"))
    for _ in range(count):
        writer.add(rng.randint(0, VOCAB, size=args.n_ctx + 1).tolist())
    writer.finish(os.path.join(records, tfrecords_name("synthetic", 0, count)))
    os.makedirs(os.path.join(workdir, "dataset_configs"))
    with open(os.path.join(workdir, "dataset_configs", "synthetic.json"), "w") as f:
        json.dump({"n_vocab": VOCAB, "path": os.path.join(records, "*.tfrecords"), "tokenizer_path": "gpt2",
                   "eos_id": VOCAB - 1, "padding_id": VOCAB - 1}, f)
    path = os.path.join(workdir, "bench_train.json")
    with open(path, "w") as f:
        json.dump(training_config(args.n_ctx, args.batch, args.n_layer, steps, os.path.join(workdir, "model"),
                                  args.dtype, args.chunked_loss), f)
    return path


def worker_ours(args):
    from gpt_neo_mtf.cli import gpt_neo as main_py
    from gpt_neo_mtf.meshtf import tf

    steps = args.warmup + args.steps
    workdir = tempfile.mkdtemp(prefix="gpt-neo-bench-train-")
    # The process peak so far, every 20 ms, read at each step's summary time below.
    peaks, running = [], threading.Event()
    running.set()

    def sample():
        while running.is_set():
            peaks.append((time.time(), peak_rss_mb()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        path = _write_run(workdir, args, steps)
        code = main_py.main(["--model", path, "--peak_tflops", repr(args.peak_tflops), "--steps_per_checkpoint",
                             str(checkpoint_interval(steps))])
        if code:
            raise SystemExit("main.py exited with %d" % code)
        rates, times = {}, {}
        for events in tf.io.gfile.glob(os.path.join(workdir, "model", "events.out.tfevents.*")):
            for event in tf.train.summary_iterator(events):
                for v in event.summary.value:
                    if v.tag == "tokens_per_sec":
                        rates[event.step], times[event.step] = v.simple_value, event.wall_time
    finally:
        running.clear()
        shutil.rmtree(workdir)
    step_seconds = [args.n_ctx * args.batch / rates[s] for s in range(args.warmup + 1, steps + 1)]
    peak_after = [max([mb for t, mb in peaks if t <= times[s]] or [0.0]) for s in range(1, steps + 1)]
    return {"seconds": sum(step_seconds), "step_seconds": step_seconds, "peak_rss_after_step": peak_after}


def worker_profile(args):
    """One traced training step (after args.warmup untraced ones) of our train op, through the estimator."""
    # Ops one at a time, so an op's time in the trace is its own, not time spent queueing for the
    # 2-thread intra-op pool behind an overlapping op (the timed runs use 2 inter-op threads).
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    from gpt_neo_mtf.meshtf import tf
    from gpt_neo_mtf.trainer.config import build_config
    from gpt_neo_mtf.trainer.estimator import build_estimator
    from gpt_neo_mtf.trainer.hardware import select_hardware

    class TraceStep(tf.train.SessionRunHook):
        def __init__(self, at):
            self.at, self.runs, self.step_stats, self.seconds = at, 0, None, None

        def begin(self):
            self.graph = tf.get_default_graph()

        def before_run(self, run_context):
            self.runs += 1
            if self.runs == self.at:
                self.seconds = time.perf_counter()
                return tf.train.SessionRunArgs(None, options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE))
            return None

        def after_run(self, run_context, run_values):
            if self.runs == self.at:
                self.seconds = time.perf_counter() - self.seconds
                self.step_stats = run_values.run_metadata.step_stats

    steps = args.warmup + 1
    workdir = tempfile.mkdtemp(prefix="gpt-neo-bench-train-")
    try:
        raw = dict(training_config(args.n_ctx, args.batch, args.n_layer, steps, workdir, args.dtype,
                                   args.chunked_loss), datasets=[], no_dataset=True)
        config = build_config(raw, "bench_train", [])
        estimator = build_estimator(config, select_hardware(config.mesh), checkpoint_interval(steps))
        ids = np.random.RandomState(1234).randint(0, VOCAB, size=(args.batch, args.n_ctx + 1)).astype(np.int32)

        def input_fn(params):
            return tf.data.Dataset.from_tensors((ids[:, :-1], ids[:, 1:])).repeat()

        trace = TraceStep(steps)
        estimator.train(input_fn, max_steps=steps, hooks=[trace])
        return {"profile": trace_summary(trace.step_stats, trace.graph, steps=1), "traced_seconds": trace.seconds,
                "memory": memory_summary(trace.step_stats)}
    finally:
        shutil.rmtree(workdir)


def worker_hf(args):
    import torch
    import transformers
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    config = GPTNeoConfig(vocab_size=VOCAB, max_position_embeddings=args.n_ctx, hidden_size=768,
                          num_layers=args.n_layer, attention_types=[[["global", "local"], args.n_layer // 2]],
                          num_heads=12, window_size=256, embed_dropout=0.0, attention_dropout=0.0,
                          resid_dropout=0.0)
    model = GPTNeoForCausalLM(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = args.warmup + args.steps
    ids = torch.randint(0, VOCAB, (steps, args.batch, args.n_ctx), generator=torch.Generator().manual_seed(1234))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    step_seconds, peak_after = [], []
    for i in range(steps):
        start = time.perf_counter()
        with autocast:
            loss = model(input_ids=ids[i], labels=ids[i]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_seconds.append(time.perf_counter() - start)
        peak_after.append(peak_rss_mb())
    timed = step_seconds[args.warmup:]
    return {"seconds": sum(timed), "step_seconds": timed, "peak_rss_after_step": peak_after,
            "final_loss": loss.item(), "torch": torch.__version__,
            "transformers": transformers.__version__, "attn_implementation": model.config._attn_implementation}


WORKERS = {"peak_tf": worker_peak_tf, "peak_torch": worker_peak_torch, "ours": worker_ours, "hf": worker_hf,
           "profile": worker_profile}
NAMES = {"ours": "ours (main.py)", "hf": "HF GPTNeoForCausalLM"}


# ---------------------------------------------------------------------------------------------
# Driver


def run(args, worker, n_ctx=None, batch=None, dtype=None, peak_tflops=None):
    command = [sys.executable, os.path.abspath(__file__), "--worker", worker, "--shapes",
               ",".join("%dx%d" % s for s in args.shapes), "--n_layer", str(args.n_layer), "--warmup",
               str(args.warmup), "--steps", str(args.steps), "--matmul_reps", str(args.matmul_reps),
               "--dtypes", ",".join(args.dtypes)] + (["--chunked_loss"] if args.chunked_loss else [])
    if n_ctx:
        command += ["--n_ctx", str(n_ctx), "--batch", str(batch), "--dtype", dtype]
    if peak_tflops:
        command += ["--peak_tflops", repr(peak_tflops)]
    label = worker if n_ctx is None else "%s at n_ctx %d x batch %d, %s" % (worker, n_ctx, batch, dtype)
    result = run_worker(command, label)
    timed = " (%.1f s timed)" % result["seconds"] if "seconds" in result else ""
    print("  %-36s %5.0f s in all%s, peak RSS %.0f MB, 1-min load average %.1f -> %.1f" % (
        label, result["wall_s"], timed, result["peak_rss_mb"], result["load_before"], result["load_after"]),
        flush=True)
    return result


def model_flops_per_token(args, n_ctx):
    from gpt_neo_mtf.trainer.config import build_config
    from gpt_neo_mtf.trainer.flops import model_flops_per_token

    return model_flops_per_token(build_config(raw_config(n_ctx, args.n_layer), "bench", []).model)


def print_tables(args, peaks, results):
    print("\nMatmul GFLOP/s (best of %d), %d threads:\n" % (args.matmul_reps, THREADS))
    columns = [(side, dtype) for side in ("TF", "torch") for dtype in args.dtypes]
    print("| GEMM [M,K]x[K,N] | %s |" % " | ".join("%s %s" % column for column in columns))
    print("|---|%s" % ("---|" * len(columns)))
    for m, k, n in gemm_shapes(args.shapes):
        print("| [%d,%d]x[%d,%d] | %s |" % (m, k, k, n, " | ".join(
            "%.1f" % (peaks[side.lower()]["flops"][gemm_key(m, k, n, dtype)] / 1e9) for side, dtype in columns)))
    print("\nTraining, %d layers, %d timed steps after %d warm-up; MFU against the larger 1024^3 figure of TF and"
          " torch in the run's dtype (%s):\n" % (args.n_layer, args.steps, args.warmup, ", ".join(
              "%s %.1f GFLOP/s" % (dtype, cpu_peak(peaks, dtype) / 1e9) for dtype in args.dtypes)))
    print("| n_ctx x batch | dtype | implementation | tokens/s | ours/HF | s/step | best step tokens/s | spread |"
          " model TFLOP/s | MFU | peak RSS MB | ours/HF RSS |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n_ctx, batch in args.shapes:
        flops_per_token = model_flops_per_token(args, n_ctx)
        for dtype in args.dtypes:
            rows = {impl: results[impl, n_ctx, batch, dtype] for impl in args.only
                    if (impl, n_ctx, batch, dtype) in results}
            rates = {impl: n_ctx * batch * args.steps / result["seconds"] for impl, result in rows.items()}
            for impl, result in rows.items():
                both = impl == "ours" and "hf" in rows
                print("| %d x %d | %s | %s | %.1f | %s | %.2f | %.1f | %.2f | %.4f | %.1f%% | %.0f | %s |" % (
                    n_ctx, batch, dtype, NAMES[impl], rates[impl], "%.2fx" % (rates[impl] / rates["hf"]) if both else "",
                    n_ctx * batch / rates[impl], n_ctx * batch / min(result["step_seconds"]),
                    max(result["step_seconds"]) / min(result["step_seconds"]), rates[impl] * flops_per_token / 1e12,
                    100 * rates[impl] * flops_per_token / cpu_peak(peaks, dtype), result["peak_rss_mb"],
                    "%.2fx" % (result["peak_rss_mb"] / rows["hf"]["peak_rss_mb"]) if both else ""))
    print()
    for (impl, n_ctx, batch, dtype), result in sorted(results.items()):
        steps = ", ".join("%.2f" % s for s in result["step_seconds"])
        if impl == "ours":
            log = [line for line in result["stdout"].splitlines() if "tokens/s" in line]
            print("ours at %d x %d, %s: timed step seconds %s; the trainer's last log line: %s" % (
                n_ctx, batch, dtype, steps, log[-1]))
        else:
            print("hf at %d x %d, %s: timed step seconds %s; last loss %.3f; torch %s, transformers %s, attention %s" % (
                n_ctx, batch, dtype, steps, result["final_loss"], result["torch"], result["transformers"],
                result["attn_implementation"]))
    print("\nPeak RSS MB after each step, warm-up included (ours: sampled every 20 ms, read at each step's summary):")
    for (impl, n_ctx, batch, dtype), result in sorted(results.items()):
        print("  %-4s %4d x %d, %-8s %s" % (impl, n_ctx, batch, dtype,
                                             " ".join("%.0f" % mb for mb in result["peak_rss_after_step"])))


def cpu_peak(peaks, dtype):
    """FLOP/s: the larger of TF's and torch's 1024^3 matmul in `dtype`."""
    return max(peaks[side]["flops"][gemm_key(1024, 1024, 1024, dtype)] for side in peaks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", type=parse_shapes, default=parse_shapes("256x4,1024x1"),
                        help="n_ctx x batch of each training measurement")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="activation dtypes to train in: float32 and/or bfloat16")
    parser.add_argument("--n_layer", type=int, default=12, help="layers (even: global/local pairs)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--matmul_reps", type=int, default=5, help="timed runs of each matmul (the best counts)")
    parser.add_argument("--only", default="ours,hf", help="training implementations to measure")
    parser.add_argument("--chunked_loss", action="store_true",
                        help="train ours with `chunked_loss` (the output layer and loss over vocabulary chunks)")
    parser.add_argument("--profile", action="store_true",
                        help="also trace one of our training steps at the first shape and print the top ops")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--n_ctx", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", choices=DTYPES, help=argparse.SUPPRESS)
    parser.add_argument("--peak_tflops", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n_layer < 2 or args.n_layer % 2:
        parser.error("--n_layer must be even (global/local pairs)")
    unknown = set(args.dtypes.split(",")) - set(DTYPES)
    if unknown:
        parser.error("--dtypes takes float32 and/or bfloat16, got %s" % ", ".join(sorted(unknown)))
    args.dtypes = [dtype for dtype in DTYPES if dtype in args.dtypes.split(",")]
    if args.worker:
        emit_result(WORKERS[args.worker](args))
        return
    args.only = [impl for impl in ("ours", "hf") if impl in args.only.split(",")]

    print(machine("bench/train.py") + " each side", flush=True)
    print(instruction_sets(), flush=True)
    peaks = {"tf": run(args, "peak_tf"), "torch": run(args, "peak_torch")}
    results = {}
    for n_ctx, batch in args.shapes:
        for dtype in args.dtypes:
            for impl in args.only:
                results[impl, n_ctx, batch, dtype] = run(args, impl, n_ctx, batch, dtype,
                                                         cpu_peak(peaks, dtype) / 1e12)
    profiles = [(dtype, run(args, "profile", *args.shapes[0], dtype)) for dtype in args.dtypes] if args.profile else []
    print_tables(args, peaks, results)
    for dtype, profile in profiles:
        n_ctx, batch = args.shapes[0]
        print_trace("Timeline of one traced training step of ours at %d x %d, %s (%.1f s, ops one at a time):"
                    % (n_ctx, batch, dtype, profile["traced_seconds"]), profile["profile"])
        print_memory("Tensors of that step (TF's allocation records; variables not included)", profile["memory"])


if __name__ == "__main__":
    main()

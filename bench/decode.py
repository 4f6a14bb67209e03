"""Decode throughput on CPU: our cached Mesh-TF sampling loop vs HF `generate` vs full recompute.

    python bench/decode.py [--n_ctx 2048] [--new_tokens 256] [--prompt 128] [--batches 1,8]
                           [--dtypes float32,bfloat16] [--recompute_steps 2] [--only kv,hf,recompute] [--profile 1,8]

A 125M-shaped GPT-Neo (12 layers, n_embd 768, 12 heads, vocab 50257, alternating global/local
attention with window 256), random weights, a random `--prompt`-token prompt per row and
`--new_tokens` greedy tokens (no early stop), for each batch size:

- kv:        models/sampling.py `generate` as --predict runs it (temperature 0, eos_id -1,
             max_new_tokens = new_tokens, caches of sampling.decode_length, the prompt prefilled
             in one parallel pass), built once, initialised (seeded initializers), run once to
             warm up, then one timed session.run of the whole generation (prefill included).
- hf:        transformers `GPTNeoForCausalLM.generate` (use_cache=True, greedy, same shape, random
             init, torch.set_num_threads(2)), warmed up, then one timed call.
- recompute: a full forward pass of models/gpt.py `gpt` over the padded [batch, n_ctx] sequence per
             new token (greedy), warmed up, `--recompute_steps` tokens timed and extrapolated.

Each of --dtypes: float32, or bfloat16: ours with `predict_precision: bfloat16` (bfloat16 weights and
activations, attention logits and softmax in float32), HF's model built in bfloat16 (as
`from_pretrained(torch_dtype=torch.bfloat16)` loads it); recompute runs in float32 only.
tokens/s = batch * new_tokens / seconds. TensorFlow runs with
ConfigProto(intra_op_parallelism_threads=2, inter_op_parallelism_threads=2); torch with 2 threads.
Each (implementation, batch) runs in its own subprocess so that thread pools do not interfere and
peak RSS (ru_maxrss) is per measurement. The kv and recompute runs share weights (same seeded
initializers), so their greedy tokens must agree; the output says whether they do.
Timings are only meaningful on an otherwise idle machine: OpenMP (torch) in particular slows down
many-fold when the 2 cores are oversubscribed, so each line reports the 1-minute load average.

`--profile 1,8` adds, for the kv implementation at those batch sizes, a TF timeline (FULL_TRACE) of one
whole generation and prints the op-type, scope and op totals (per step = total / steps).
"""
import argparse
import os
import sys
import time

import numpy as np
from common import (THREADS, VOCAB, cpu_seconds, emit_result, instruction_sets, machine, print_trace, raw_config, run_worker,
                    trace_summary)


def prompts(batch, args):
    return np.random.RandomState(1234).randint(0, VOCAB - 1, size=(batch, args.prompt)).astype(np.int32)


def _prompt_feed(batch, args):
    feed = np.zeros((batch, args.n_ctx), np.int32)
    feed[:, :args.prompt] = prompts(batch, args)
    return feed


def _initialized_session(session_config, lowering):
    """A session with the (seeded) initial weights, copied to the mesh slices."""
    from gpt_neo_mtf.meshtf import tf
    init = tf.global_variables_initializer()
    session = tf.Session(config=session_config)
    session.run(init)
    session.run(lowering.copy_masters_to_slices())
    return session


# ---------------------------------------------------------------------------------------------
# Workers (one per subprocess)


def _tf_setup(args, batch):
    from gpt_neo_mtf.meshtf import mtf, tf
    from gpt_neo_mtf.models.dims import Dims
    from gpt_neo_mtf.trainer.config import build_config
    from gpt_neo_mtf.trainer.hardware import Hardware, mesh_implementation

    config = build_config(dict(raw_config(args.n_ctx), predict_precision=args.dtype), "bench-125M", [])
    # The mesh as the trainer builds it on one CPU (masters on the device, used as its slices).
    impl, placer = mesh_implementation(Hardware("cpu", ("/cpu:0",)), config.mesh, {}, seed=1,
                                       step=tf.constant(0, tf.int64))
    graph = mtf.Graph()
    mesh = mtf.Mesh(graph, "mesh", placer)
    d = Dims.build(config.model, batch)
    ids = tf.placeholder(tf.int32, [batch, args.n_ctx], name="ids")
    tokens = mtf.import_fully_replicated(mesh, ids, mtf.Shape([d.batch, d.sequence]))
    session_config = tf.ConfigProto(intra_op_parallelism_threads=THREADS, inter_op_parallelism_threads=THREADS)
    return config, graph, mesh, d, ids, tokens, impl, session_config


def worker_kv(args, batch):
    from gpt_neo_mtf.meshtf import mtf, tf
    from gpt_neo_mtf.models.context import Context
    from gpt_neo_mtf.models.gpt import variable_dtype
    from gpt_neo_mtf.models.sampling import PredictConfig, decode_length, generate

    t_build = time.time()
    config, graph, mesh, d, ids, tokens, impl, session_config = _tf_setup(args, batch)
    lengths = mtf.import_fully_replicated(mesh, tf.constant([args.prompt] * batch, tf.int32), mtf.Shape([d.batch]))
    sampling = PredictConfig(temperature=0, predict_max_steps=args.new_tokens)
    # As --predict: caches as long as the generation needs, the prompt prefilled in one pass.
    tokens = mtf.slice(tokens, 0, decode_length(args.prompt, args.new_tokens, args.n_ctx), d.sequence.name)
    ctx = Context(d, config.model, train=False, seed=1, dtype=variable_dtype(config.predict.predict_precision,
                                                                           training=False))
    out = generate(tokens, lengths, ctx, sampling, eos_id=-1, min_prompt_length=args.prompt)
    lowering = mtf.Lowering(graph, {mesh: impl})
    out = lowering.export_to_tf_tensor(out)
    feed = _prompt_feed(batch, args)
    result = {}
    with _initialized_session(session_config, lowering) as session:
        result["build_s"] = time.time() - t_build
        start = time.time()
        session.run(out, {ids: feed})
        result["warmup_s"] = time.time() - start
        start, cpu = time.time(), cpu_seconds()
        generated = session.run(out, {ids: feed})
        seconds, result["cpu_s"] = time.time() - start, cpu_seconds() - cpu
        assert (generated[:, :args.prompt] == feed[:, :args.prompt]).all(), "prompt overwritten"
        assert not generated[:, args.prompt + args.new_tokens:].any(), "wrote past max_new_tokens"
        result.update(seconds=seconds, tokens=generated[:, args.prompt:args.prompt + args.new_tokens].tolist(),
                      steps=args.new_tokens)
        if args.profile:
            result["profile"] = profile(session, out, {ids: feed}, graph=tf.get_default_graph(),
                                        steps=result["steps"])
    return result


def profile(session, fetch, feed, graph, steps):
    """Op-type and per-op totals of one traced run (microseconds, summed over all steps)."""
    from gpt_neo_mtf.meshtf import tf

    options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE)
    metadata = tf.RunMetadata()
    start = time.time()
    session.run(fetch, feed, options=options, run_metadata=metadata)
    return dict(trace_summary(metadata.step_stats, graph, steps), traced_seconds=time.time() - start)


def worker_recompute(args, batch):
    from gpt_neo_mtf.meshtf import mtf, tf
    from gpt_neo_mtf.models.context import Context
    from gpt_neo_mtf.models.gpt import gpt

    t_build = time.time()
    config, graph, mesh, d, ids, tokens, impl, session_config = _tf_setup(args, batch)
    logits = gpt(tokens, Context(d, config.model, train=False, seed=1))
    lowering = mtf.Lowering(graph, {mesh: impl})
    logits = lowering.export_to_tf_tensor(logits)
    position = tf.placeholder(tf.int32, [], name="position")
    # Only the argmax at the last filled position is fetched (the logits are [batch, n_ctx, vocab]).
    chosen = tf.argmax(logits[:, position], axis=-1, output_type=tf.int32)
    feed = _prompt_feed(batch, args)
    result = {}
    with _initialized_session(session_config, lowering) as session:
        result["build_s"] = time.time() - t_build
        start = time.time()
        session.run(chosen, {ids: feed, position: args.prompt - 1})
        result["warmup_s"] = time.time() - start
        times = []
        cpu = cpu_seconds()
        for i in range(args.recompute_steps):
            length = args.prompt + i
            start = time.time()
            feed[:, length] = session.run(chosen, {ids: feed, position: length - 1})
            times.append(time.time() - start)
        per_token = sum(times) / len(times)
        result["cpu_s"] = (cpu_seconds() - cpu) / len(times) * args.new_tokens
        result.update(seconds=per_token * args.new_tokens, per_forward_s=times,
                      tokens=feed[:, args.prompt:args.prompt + args.recompute_steps].tolist())
    return result


def worker_hf(args, batch):
    import torch
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    t_build = time.time()
    config = GPTNeoConfig(vocab_size=VOCAB, max_position_embeddings=args.n_ctx, hidden_size=768, num_layers=12,
                          attention_types=[[["global", "local"], 6]], num_heads=12, window_size=256)
    # Built in the dtype (as from_pretrained(torch_dtype=...) loads), so no float32 copy inflates the peak RSS.
    model = GPTNeoForCausalLM._from_config(config, torch_dtype=getattr(torch, args.dtype)).eval()
    ids = torch.tensor(prompts(batch, args), dtype=torch.long)
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, do_sample=False, use_cache=True, pad_token_id=config.eos_token_id)
    result = {"build_s": time.time() - t_build}
    with torch.inference_mode():
        start = time.time()
        model.generate(ids, max_new_tokens=16, min_new_tokens=16, **kwargs)
        result["warmup_s"] = time.time() - start
        start, cpu = time.time(), cpu_seconds()
        out = model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, **kwargs)
        seconds, result["cpu_s"] = time.time() - start, cpu_seconds() - cpu
    assert out.shape == (batch, args.prompt + args.new_tokens), out.shape
    result.update(seconds=seconds, attn_implementation=getattr(model.config, "_attn_implementation", None))
    return result


WORKERS = {"kv": worker_kv, "hf": worker_hf, "recompute": worker_recompute}
NAMES = {"kv": "ours, KV cache (mtf while loop)", "hf": "HF GPTNeo generate (use_cache)",
         "recompute": "ours, full recompute (extrapolated)"}


# ---------------------------------------------------------------------------------------------
# Driver


def run_decode_worker(args, impl, batch, dtype):
    command = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--batch", str(batch), "--dtype", dtype,
               "--n_ctx", str(args.n_ctx), "--new_tokens", str(args.new_tokens), "--prompt", str(args.prompt),
               "--recompute_steps", str(args.recompute_steps)]
    if impl == "kv" and str(batch) in args.profile.split(","):
        command.append("--profile=%d" % batch)
    result = run_worker(command, "%s at batch %d, %s" % (impl, batch, dtype))
    print("  %-9s batch %d, %-8s: %.1f s timed (CPU %.1f s), %.0f s in all, 1-min load average %.1f -> %.1f" % (
        impl, batch, dtype, result["seconds"], result["cpu_s"], result["wall_s"], result["load_before"],
        result["load_after"]), flush=True)
    return result


def print_profile(result, batch, dtype):
    p = result["profile"]
    print_trace("Timeline of one traced kv generation, batch %d, %s (%.1f s traced vs %.1f s untraced; %d steps;"
                " op time summed over both threads' executors):" % (batch, dtype, p["traced_seconds"], result["seconds"],
                                                                    p["steps"]), p)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n_ctx", type=int, default=2048)
    parser.add_argument("--new_tokens", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="weights and activations: float32 and/or bfloat16")
    parser.add_argument("--recompute_steps", type=int, default=2, help="timed full forward passes per batch size")
    parser.add_argument("--only", default="hf,kv,recompute")
    parser.add_argument("--profile", default="", metavar="BATCHES",
                        help="comma-separated batch sizes whose kv run also records a TF timeline")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prompt + args.new_tokens > args.n_ctx:
        parser.error("--prompt + --new_tokens must be <= --n_ctx")

    if args.worker:
        emit_result(WORKERS[args.worker](args, args.batch))
        return

    impls = [i for i in ("hf", "kv", "recompute") if i in args.only.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    unknown = set(args.dtypes.split(",")) - {"float32", "bfloat16"}
    if unknown:
        parser.error("--dtypes takes float32 and/or bfloat16, got %s" % ", ".join(sorted(unknown)))
    dtypes = [dtype for dtype in ("float32", "bfloat16") if dtype in args.dtypes.split(",")]
    print(machine("bench/decode.py"), flush=True)
    print(instruction_sets(), flush=True)
    print("decode benchmark: 125M shape (12 layers, n_embd 768, 12 heads, vocab %d, global/local window 256),"
          " n_ctx %d, prompt %d, %d new tokens, greedy, random weights; CPU, %d threads"
          " (TF ConfigProto intra_op=%d inter_op=%d; torch.set_num_threads(%d))"
          % (VOCAB, args.n_ctx, args.prompt, args.new_tokens, THREADS, THREADS, THREADS, THREADS), flush=True)
    # recompute only in float32: it is the correctness yardstick for the cached decoder, not a contender
    runs = [(impl, batch, dtype) for batch in batches for dtype in dtypes for impl in impls
            if impl != "recompute" or dtype == "float32"]
    results = {run: run_decode_worker(args, *run) for run in runs}

    print()
    header = "| %-38s | %5s | %8s | %9s | %11s | %11s | %13s | %10s |" % (
        "implementation", "batch", "dtype", "tokens/s", "vs HF", "vs recompute", "peak RSS (MB)", "RSS vs HF")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    for impl, batch, dtype in runs:
        r = results[impl, batch, dtype]
        rate = batch * args.new_tokens / r["seconds"]
        hf = results.get(("hf", batch, dtype)) if impl != "hf" else None
        rc = results.get(("recompute", batch, "float32")) if impl != "recompute" else None
        vs_hf = "%.3gx" % (rate / (batch * args.new_tokens / hf["seconds"])) if hf else "-"
        vs_rc = "%.3gx" % (rate / (batch * args.new_tokens / rc["seconds"])) if rc else "-"
        rss_hf = "%.2fx" % (r["peak_rss_mb"] / hf["peak_rss_mb"]) if hf else "-"
        print("| %-38s | %5d | %8s | %9.2f | %11s | %12s | %13.0f | %10s |" % (
            NAMES[impl], batch, dtype, rate, vs_hf, vs_rc, r["peak_rss_mb"], rss_hf))
    print()
    for batch in batches:
        if ("kv", batch, "float32") in results and ("recompute", batch, "float32") in results:
            kv, rc = results["kv", batch, "float32"]["tokens"], results["recompute", batch, "float32"]["tokens"]
            k = len(rc[0])
            same = all(list(a[:k]) == list(b) for a, b in zip(kv, rc))
            print("batch %d: first %d greedy tokens of kv == full recompute: %s" % (batch, k, same))
        if ("recompute", batch, "float32") in results:
            print("batch %d: full forward passes took %s s" % (
                batch, ", ".join("%.2f" % s for s in results["recompute", batch, "float32"]["per_forward_s"])))
    for (impl, batch, dtype), r in results.items():
        print("batch %d %-9s %-8s: build+init %.1f s, warm-up %.1f s, timed %.1f s (process CPU %.1f s)%s" % (
            batch, impl, dtype, r["build_s"], r["warmup_s"], r["seconds"], r["cpu_s"],
            " (extrapolated)" if impl == "recompute" else ""))
    for (impl, batch, dtype), r in results.items():
        if "profile" in r:
            print_profile(r, batch, dtype)


if __name__ == "__main__":
    main()

"""Benchmark: create_tfrecords vs the tokenizer's raw batch-encode speed, and peak RSS (issue 3).

    python bench/create_tfrecords.py [--size_mb 100] [--workdir DIR] [--tokenizers_parallelism default]

What it does, all in one run so the figures are comparable:

1. Generates (or reuses) a deterministic corpus of --size_mb MB of text (UTF-8 bytes of the `text`
   fields, MB = 10**6 bytes) in Pile format: 4 shards `<workdir>/corpus/NN.jsonl.zst`, each
   --size_mb / 4 MB, lines `{"meta": {"pile_set_name": ...}, "text": ...}`. Documents are re-sampled
   from the shipped sample corpus data/sample/train.jsonl.zst with paragraphs shuffled, mixed across
   documents and (half of them) words shuffled, by a seeded RNG, so the BPE does not see the same
   documents over and over. Shard 00 alone is the 1/4-size corpus of the RSS growth check.
2. Raw tokenizer baseline: in a subprocess, streams the same documents with
   tfrecords_tools.sources.document_stream (same reading, decompression and JSON decoding as the
   converter) and calls Tokenizer.encode_batch on batches of 256 documents, counting tokens, bytes and
   seconds; then the same with 2 spawned processes, each encoding every other batch.
3. create_tfrecords (chunks mode, chunk_size 2048, files_per 10000) with --processes 1 and 2, each in
   its own subprocess and a fresh output directory; the child times the create_tfrecords() call and
   prints its peak RSS (getrusage RUSAGE_SELF and RUSAGE_CHILDREN ru_maxrss) as JSON.
4. Peak RSS growth: create_tfrecords with 1 process on the 1/4-size corpus (shard 00).
5. Prints a table: MB/s, tokens/s, % of the raw tokenizer with the same process count, peak RSS.

TOKENIZERS_PARALLELISM: `tokenizers` runs encode_batch on a Rust (rayon) thread pool over all cores
unless TOKENIZERS_PARALLELISM=false. The benchmark sets the same value for every subprocess (baseline
and converter alike). The default (--tokenizers_parallelism default) leaves the variable unset, i.e.
the library default: parallel, so even a "1 process" run uses every core for the encoding itself.
Pass `false` to measure strictly one core per process.

Peak RSS: RUSAGE_SELF is the main process; RUSAGE_CHILDREN's ru_maxrss is the largest single
(reaped) descendant, i.e. one pool worker. "total" in the table = main + processes x worker for pool
runs (an upper bound of what is resident at once), main alone for 1-process runs (their only
"child" is a short-lived helper that importing TensorFlow forks).

CPU s: user + system CPU seconds of the timed section, all threads, pool workers included; on a
machine shared with other work it is a steadier comparison than wall-clock time ("% of raw (CPU)").
The "load" column (1-minute load average after each run) shows how busy the machine was.
--repeat N runs every measurement N times, interleaved, and keeps the fastest.
"""
import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(REPO, "data", "sample", "train.jsonl.zst")
SHARDS = 4                 # the corpus is written as this many equal shards; shard 00 = the 1/4 corpus
SEED = 1234
BATCH = 256                # documents per encode_batch call (the converter's BATCH_DOCUMENTS)
CHUNK_SIZE = 2048
FILES_PER = 10000
MB = 1e6
CORPUS_VERSION = 1         # bump when the generator changes, so an old corpus is not reused


# ---------------------------------------------------------------------------------------------
# 1. The corpus


def _sample_documents():
    """[(pile_set_name, [paragraph, ...])] of the shipped sample corpus."""
    import zstandard
    with open(SAMPLE, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    documents = []
    for line in data.decode("utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            paragraphs = [p for p in record["text"].split("\n\n") if p.strip()]
            documents.append((record["meta"]["pile_set_name"], paragraphs))
    return documents


def _shuffle_words(paragraph, rng):
    """The paragraph with the words of each line shuffled (line breaks and indentation kept)."""
    lines = []
    for line in paragraph.split("\n"):
        indent = line[:len(line) - len(line.lstrip(" "))]
        words = line.split()
        rng.shuffle(words)
        lines.append(indent + " ".join(words))
    return "\n".join(lines)


def _generate_document(documents, rng):
    """One new document: a random sample document's paragraphs, shuffled, ~1/4 of them swapped for
    paragraphs of other documents, and the words of about half of them shuffled."""
    name, paragraphs = rng.choice(documents)
    paragraphs = list(paragraphs)
    rng.shuffle(paragraphs)
    out = []
    for paragraph in paragraphs:
        if rng.random() < 0.25:
            paragraph = rng.choice(rng.choice(documents)[1])
        if rng.random() < 0.5:
            paragraph = _shuffle_words(paragraph, rng)
        out.append(paragraph)
    return {"meta": {"pile_set_name": name}, "text": "\n\n".join(out)}


def _write_shard(path, target_bytes, documents, seed):
    """Write documents until their text holds >= target_bytes UTF-8 bytes; return (documents, bytes)."""
    import zstandard
    rng = random.Random(seed)
    count = size = 0
    temp = path + ".incomplete"
    with open(temp, "wb") as raw:
        with zstandard.ZstdCompressor(level=3).stream_writer(raw) as out:
            while size < target_bytes:
                record = _generate_document(documents, rng)
                out.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
                size += len(record["text"].encode("utf-8"))
                count += 1
    os.rename(temp, path)
    return count, size


def ensure_corpus(workdir, size_mb):
    """The corpus's shard paths and its description, generated unless an identical one exists."""
    directory = os.path.join(workdir, "corpus")
    info_path = os.path.join(directory, "corpus.json")
    wanted = {"version": CORPUS_VERSION, "size_mb": size_mb, "shards": SHARDS, "seed": SEED}
    if os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if {k: info.get(k) for k in wanted} == wanted and all(os.path.exists(p) for p in info["paths"]):
            print("reusing corpus %s (%.1f MB of text, %d documents)" % (directory, info["bytes"] / MB,
                                                                      info["documents"]), flush=True)
            return info
    shutil.rmtree(directory, ignore_errors=True)
    os.makedirs(directory)
    documents = _sample_documents()
    start = time.perf_counter()
    info = dict(wanted, paths=[], documents=0, bytes=0, shard_documents=[], shard_bytes=[])
    for shard in range(SHARDS):
        path = os.path.join(directory, "%02d.jsonl.zst" % shard)
        count, size = _write_shard(path, size_mb * MB / SHARDS, documents, SEED + shard)
        info["paths"].append(path)
        info["shard_documents"].append(count)
        info["shard_bytes"].append(size)
        info["documents"] += count
        info["bytes"] += size
    with open(info_path, "w") as f:
        json.dump(info, f, indent=1)
    print("generated corpus %s: %.1f MB of text, %d documents, %.0f s" % (
        directory, info["bytes"] / MB, info["documents"], time.perf_counter() - start), flush=True)
    return info


# ---------------------------------------------------------------------------------------------
# Children: each measurement runs in a fresh interpreter (python bench/create_tfrecords.py --child ...)
# and prints one JSON line; the parent only orchestrates, so its own memory does not count.


def _cpu_seconds():
    """CPU seconds (user + system) of this process, all its threads, and its reaped children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_rss_mb():
    """(this process, largest reaped child) peak RSS in MB (Linux ru_maxrss is in KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


def _encode_batches(paths, worker, workers, ready=None, go=None):
    """Stream the documents like the converter and encode_batch every `workers`-th batch of BATCH
    documents starting at `worker`; return (documents, tokens, bytes, start, end, CPU seconds).

    Every worker reads and JSON-decodes the whole stream (cheap next to BPE: see the "read only"
    row) and tokenizes only its own batches.
    """
    from gpt_neo_mtf.inputs.tokenizer import load_tokenizer
    from gpt_neo_mtf.tfrecords_tools.sources import document_stream
    tokenizer = load_tokenizer("gpt2")
    if ready is not None:  # 2-process baseline: start the clock only when both workers are ready
        ready.wait()
        go.wait()
    start, cpu = time.perf_counter(), _cpu_seconds()
    documents = tokens = size = 0
    batch, index = [], 0
    for _, text in document_stream(paths):
        batch.append(text)
        if len(batch) == BATCH:
            if index % workers == worker:
                tokens += sum(len(e.ids) for e in tokenizer.encode_batch(batch))
                size += sum(len(t.encode("utf-8")) for t in batch)
                documents += len(batch)
            batch, index = [], index + 1
    if batch and index % workers == worker:
        tokens += sum(len(e.ids) for e in tokenizer.encode_batch(batch))
        size += sum(len(t.encode("utf-8")) for t in batch)
        documents += len(batch)
    return documents, tokens, size, start, time.perf_counter(), _cpu_seconds() - cpu


def _baseline_worker(paths, worker, workers, ready, go, results):
    results.put(_encode_batches(paths, worker, workers, ready, go))


def child_read(paths):
    """Reading alone: decompress + JSON-decode every document, no tokenizing."""
    from gpt_neo_mtf.tfrecords_tools.sources import document_stream
    start, cpu = time.perf_counter(), _cpu_seconds()
    documents = size = 0
    for _, text in document_stream(paths):
        documents += 1
        size += len(text.encode("utf-8"))
    return {"documents": documents, "bytes": size, "tokens": 0, "seconds": time.perf_counter() - start,
            "cpu_seconds": _cpu_seconds() - cpu}


def child_baseline(paths, processes):
    """Raw encode_batch throughput with 1 process, or `processes` spawned workers splitting the batches."""
    if processes == 1:
        documents, tokens, size, start, end, cpu = _encode_batches(paths, 0, 1)
        return {"documents": documents, "tokens": tokens, "bytes": size, "seconds": end - start, "cpu_seconds": cpu}
    import multiprocessing
    context = multiprocessing.get_context("spawn")  # as the converter's pool: no fork of a tokenizer
    ready, go, results = context.Barrier(processes + 1), context.Event(), context.Queue()
    workers = [context.Process(target=_baseline_worker, args=(paths, w, processes, ready, go, results))
               for w in range(processes)]
    for w in workers:
        w.start()
    ready.wait()  # every worker has imported its modules and loaded the tokenizer
    start = time.perf_counter()
    go.set()
    parts = [results.get() for _ in workers]
    seconds = time.perf_counter() - start
    for w in workers:
        w.join()
    return {"documents": sum(p[0] for p in parts), "tokens": sum(p[1] for p in parts),
            "bytes": sum(p[2] for p in parts), "seconds": seconds,
            "cpu_seconds": sum(p[5] for p in parts)}  # the workers' timed sections


def child_convert(paths, processes, output_dir):
    """One create_tfrecords() call, timed (tokenizer loading, pool start-up and writing included)."""
    from gpt_neo_mtf.tfrecords_tools.create_tfrecords import create_tfrecords
    start, cpu = time.perf_counter(), _cpu_seconds()
    manifest = create_tfrecords(paths, output_dir, "gpt2", name="bench", mode="chunks", chunk_size=CHUNK_SIZE,
                                files_per=FILES_PER, processes=processes, progress=False)
    seconds = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu  # main process + pool workers (reaped when the pool closes)
    return {"cpu_seconds": cpu, "documents": manifest["documents"], "records": manifest["records"], "files": len(manifest["files"]),
            # every document's tokens + 1 separator, whether they ended in a record or were left over
            "tokens": manifest["tokens"] + manifest["discarded_tokens"] - manifest["documents"],
            "seconds": seconds}


def run_child(args):
    paths = args.paths
    if args.child == "read":
        result = child_read(paths)
    elif args.child == "baseline":
        result = child_baseline(paths, args.processes)
    else:
        result = child_convert(paths, args.processes, args.output_dir)
    result["rss_main_mb"], result["rss_worker_mb"] = _peak_rss_mb()
    print("BENCH_RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: run each measurement in a subprocess, collect the JSON, print the table.


def measure(label, child, paths, processes, env, output_dir=None):
    """Run one measurement in a fresh interpreter; return its JSON result plus the load average."""
    command = [sys.executable, os.path.abspath(__file__), "--child", child, "--processes", str(processes),
               "--paths"] + paths
    if output_dir:
        shutil.rmtree(output_dir, ignore_errors=True)  # a fresh output directory every time
        command += ["--output_dir", output_dir]
    print("running: %s ..." % label, flush=True)
    wall = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - wall
    lines = [l for l in done.stdout.splitlines() if l.startswith("BENCH_RESULT ")]
    if done.returncode != 0 or not lines:
        sys.stderr.write(done.stderr[-5000:])
        raise SystemExit("%s failed (exit status %d)" % (label, done.returncode))
    result = json.loads(lines[-1][len("BENCH_RESULT "):])
    # The 1-minute load average at the end: above the CPU count, something else was competing for the
    # CPUs during the run and its wall-clock figures are pessimistic (CPU seconds much less so).
    result.update(label=label, kind=child, processes=processes, wall=wall, load=os.getloadavg()[0])
    print("  %.1f s, %.1f CPU s (subprocess wall %.1f s, load %.1f): %s" % (
        result["seconds"], result["cpu_seconds"], wall, result["load"], json.dumps(result)), flush=True)
    return result


def table(results, corpus_bytes):
    """The results as a Markdown table.

    % of raw: the run's tokens/s over the raw encode_batch tokens/s with the same process count
    (the 1/4-size run is compared with the full-size baseline: both are rates). % of raw (CPU): the
    same with tokens per CPU-second, which competing load on the machine distorts much less.
    """
    baseline = {r["processes"]: r for r in results if r["kind"] == "baseline"}
    rows = []
    header = ("run", "MB", "seconds", "MB/s", "tokens/s", "% of raw", "CPU s", "% of raw (CPU)", "load",
              "peak RSS MB (main / worker / total)")
    for r in results:
        size = r["bytes"] if "bytes" in r else corpus_bytes[r["label"]]  # converter: the text it was given
        tokens_s = r["tokens"] / r["seconds"] if r["tokens"] else None
        raw = baseline.get(r["processes"])
        share = share_cpu = ""
        if r["kind"] == "convert" and raw:
            share = "%.0f%%" % (100 * tokens_s / (raw["tokens"] / raw["seconds"]))
            share_cpu = "%.0f%%" % (100 * (r["tokens"] / r["cpu_seconds"]) / (raw["tokens"] / raw["cpu_seconds"]))
        elif r["kind"] == "baseline":
            share = share_cpu = "100%"
        pool = r["processes"] if r["processes"] > 1 else 0
        total = r["rss_main_mb"] + pool * r["rss_worker_mb"]
        worker = "%.0f" % r["rss_worker_mb"] if pool else "-"
        rows.append((r["label"], "%.1f" % (size / MB), "%.1f" % r["seconds"], "%.2f" % (size / MB / r["seconds"]),
                     "%.0f" % tokens_s if tokens_s else "-", share, "%.1f" % r["cpu_seconds"], share_cpu,
                     "%.1f" % r["load"], "%.0f / %s / %.0f" % (r["rss_main_mb"], worker, total)))
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    line = lambda row: "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |"
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(out + [line(row) for row in rows])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size_mb", type=float, default=100, help="MB (10**6 bytes) of text in the corpus")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "gpt-neo-bench-create-tfrecords"),
                   help="where the corpus (reused between runs) and the output TFRecords go "
                        "(default: %(default)s)")
    p.add_argument("--tokenizers_parallelism", choices=("default", "true", "false"), default="default",
                   help="TOKENIZERS_PARALLELISM for every subprocess; default: leave it unset (library "
                        "default: encode_batch uses Rust threads on all cores)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every measurement this many times (interleaved) and keep the fastest; helps "
                        "on a machine shared with other work")
    p.add_argument("--skip_read", action="store_true", help="leave out the read-only row")
    # internal: one measurement in a child process
    p.add_argument("--child", choices=("read", "baseline", "convert"), help=argparse.SUPPRESS)
    p.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--paths", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--output_dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        sys.path.insert(0, REPO)
        return run_child(args)

    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TOKENIZERS_PARALLELISM", None)
    if args.tokenizers_parallelism != "default":
        env["TOKENIZERS_PARALLELISM"] = args.tokenizers_parallelism
    parallelism = env.get("TOKENIZERS_PARALLELISM", "unset (tokenizers default: parallel)")
    print("TOKENIZERS_PARALLELISM=%s, %d CPUs, python %s" % (parallelism, os.cpu_count(),
                                                            sys.version.split()[0]), flush=True)

    info = ensure_corpus(workdir, args.size_mb)
    full, quarter = info["paths"], info["paths"][:1]
    corpus_bytes = {}
    plan = []  # (label, child, paths, processes, output_dir)
    if not args.skip_read:
        plan.append(("read only (full)", "read", full, 1, None))
    plan.append(("raw encode_batch, 1 process (full)", "baseline", full, 1, None))
    plan.append(("raw encode_batch, 2 processes (full)", "baseline", full, 2, None))
    for processes in (1, 2):
        label = "create_tfrecords, %d process%s (full)" % (processes, "" if processes == 1 else "es")
        corpus_bytes[label] = info["bytes"]
        plan.append((label, "convert", full, processes, os.path.join(workdir, "out%d" % processes)))
    label = "create_tfrecords, 1 process (1/4 size)"
    corpus_bytes[label] = info["shard_bytes"][0]
    plan.append((label, "convert", quarter, 1, os.path.join(workdir, "out_quarter")))

    best = {}
    for _ in range(args.repeat):
        for label, child, paths, processes, output_dir in plan:
            result = measure(label, child, paths, processes, env, output_dir)
            if label not in best or result["seconds"] < best[label]["seconds"]:
                best[label] = result
    results = [best[entry[0]] for entry in plan]

    print()
    print("%s; corpus: %.1f MB of text, %d documents, %d shards; TOKENIZERS_PARALLELISM=%s; %d CPUs; "
          "best of %d" % (time.strftime("%Y-%m-%d"), info["bytes"] / MB, info["documents"], len(full),
                          parallelism, os.cpu_count(), args.repeat))
    print(table(results, corpus_bytes))
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"corpus": info, "tokenizers_parallelism": env.get("TOKENIZERS_PARALLELISM"),
                   "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

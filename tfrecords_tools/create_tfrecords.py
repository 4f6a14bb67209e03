"""Pile shards (*.jsonl.zst) and text -> the TFRecords main.py reads, locally or on gs://: the work of
`gpt-neo-create-tfrecords`, whose usage (cli/create_tfrecords.py) says what it writes, how it resumes and
what it refuses.
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import multiprocessing
import os
import re
import shlex
import signal
import sys
import threading
import time

import numpy as np
from tokenizers import Tokenizer

from .. import storage
from ..errors import UserError, first_line
from ..inputs.tokenizer import END_OF_TEXT, PADDING, load_tokenizer
from ..meshtf import tf
from . import records
from .sources import BytesRead, SkipCounts, TextOptions, document_stream, input_files

MODES = ("chunks", "documents")
SKIP_FIELDS = [f.name for f in dataclasses.fields(SkipCounts)]
MANIFEST_VERSION = 1
BATCH_DOCUMENTS = 256          # documents per tokenizer batch
BATCH_CHARACTERS = 4 << 20     # ... or this much text, whichever comes first


class RecordsError(UserError):
    """A problem with the arguments or the output directory, worded for the user."""


# ---------------------------------------------------------------------------------------------
# Tokenizing in batches, in this process or a pool, always in input order.

_worker_tokenizer = None


def _start_worker(tokenizer_json, worker_process=False):
    global _worker_tokenizer
    if worker_process:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread each: N processes use N cores
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # Ctrl-C is the parent's: it stops the pool
    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _encode(texts):
    """Token ids of a batch as one flat int32 array plus lengths (cheap to send between processes)."""
    ids = [encoding.ids for encoding in _worker_tokenizer.encode_batch(texts)]
    lengths = np.array([len(x) for x in ids], np.int64)
    return np.fromiter(itertools.chain.from_iterable(ids), np.int32, int(lengths.sum())), lengths


def _batches(documents):
    """Group (position, text) into batches by count and size; yields (positions, texts, characters)."""
    positions, texts, size = [], [], 0
    for position, text in documents:
        positions.append(position)
        texts.append(text)
        size += len(text)
        if len(texts) == BATCH_DOCUMENTS or size >= BATCH_CHARACTERS:
            yield positions, texts, size
            positions, texts, size = [], [], 0
    if texts:
        yield positions, texts, size


def tokenized(documents, tokenizer, processes):
    """Yield (position, token ids, characters) per document, in input order.

    Batches are encoded ahead, in a thread (one process: the Rust tokenizer releases the GIL, so
    records are written while the next batch encodes) or in forked worker processes; at most 2
    batches per worker are in flight, so memory does not grow with the input.
    """
    if processes <= 1:
        _start_worker(tokenizer.to_str())
        executor = concurrent.futures.ThreadPoolExecutor(1)
    else:
        # fork: the workers share the parent's memory and use none of its TensorFlow.
        executor = concurrent.futures.ProcessPoolExecutor(
            processes, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
            initargs=(tokenizer.to_str(), True))
    try:
        pending = collections.deque()
        for positions, texts, size in _batches(documents):
            pending.append((positions, executor.submit(_encode, texts), size))
            if len(pending) > 2 * processes:
                yield from _per_document(*pending.popleft())
        while pending:
            yield from _per_document(*pending.popleft())
    finally:  # also when stopped (Ctrl-C, a bad line): batches not started are dropped
        executor.shutdown(wait=True, cancel_futures=True)


def _per_document(positions, encoded, size):
    flat, lengths = encoded.result()
    for i, (position, tokens) in enumerate(zip(positions, np.split(flat, np.cumsum(lengths)[:-1]))):
        yield position, tokens.tolist(), size if i == 0 else 0


# ---------------------------------------------------------------------------------------------
# The conversion


def _arguments(files, tokenizer_path, mode, chunk_size, files_per, separator, minimum_size, options, name):
    """What decides the output bytes; a resumed run must match it (but see `_changed`)."""
    return {"inputs": files, "tokenizer": tokenizer_path, "mode": mode, "chunk_size": chunk_size,
            "files_per": files_per, "separator": separator, "minimum_size": minimum_size, "name": name,
            "pile_set_names": list(options.pile_set_names), "ftfy": options.ftfy,
            "wikitext_detokenize": options.wikitext_detokenize, "skip_bad_lines": options.skip_bad_lines}


def manifest_path(output_dir, name):
    return "%s/%s.manifest.json" % (output_dir.rstrip("/"), name)


def create_tfrecords(inputs, output_dir, tokenizer_path="gpt2", name="data", mode="chunks", chunk_size=2048,
                     files_per=100000, separator=None, minimum_size=1, processes=1, options=TextOptions(),
                     progress=False, overwrite=False):
    """Convert `inputs` (files, directories, globs) to TFRecords in `output_dir`; return the manifest.

    `overwrite` deletes this `name`'s files in `output_dir` first (see `_own_files`).
    """
    if mode not in MODES:
        raise RecordsError("--mode must be one of %s, got %r" % (", ".join(MODES), mode))
    if chunk_size < 1 or files_per < 1 or minimum_size < 0 or processes < 1:
        raise RecordsError("--chunk_size, --files_per and --processes must be at least 1, --minimum_size at least 0")
    files = input_files(inputs if isinstance(inputs, (list, tuple)) else [inputs])
    tokenizer = load_tokenizer(tokenizer_path)
    vocab_size = tokenizer.get_vocab_size()
    if separator is None:
        separator = tokenizer.token_to_id(END_OF_TEXT)
        if separator is None:
            raise RecordsError("the tokenizer has no %s token; pass --separator ID" % END_OF_TEXT)
    if not 0 <= separator < vocab_size:
        raise RecordsError("--separator %d is outside the tokenizer's vocabulary (0..%d)" % (separator, vocab_size - 1))

    arguments = _arguments(files, tokenizer_path, mode, chunk_size, files_per, separator, minimum_size, options, name)
    manifest = _start_or_resume(output_dir, name, arguments, vocab_size, overwrite)
    if manifest["complete"]:
        return manifest
    state = manifest["resume"]
    skipped = SkipCounts(**state["skipped"])
    read = BytesRead()
    documents = document_stream(files, options, skipped, start=(state["file"], state["document"]), read=read)
    meter = _Progress(progress, manifest, read)

    pending = list(state["pending"])  # chunks mode: tokens after the last record of the last complete file
    writer = None
    try:
        with contextlib.closing(tokenized(documents, tokenizer, processes)) as stream:
            for position, tokens, characters in stream:
                meter.update(characters, len(tokens))
                manifest["documents"] += 1
                if mode == "documents":
                    if len(tokens) + 1 < max(minimum_size, 1):
                        manifest["short_documents"] += 1
                        continue
                    pieces, pending = [tokens + [separator]], []
                else:
                    pending.extend(tokens)
                    pending.append(separator)
                    cut = len(pending) - len(pending) % (chunk_size + 1)
                    pieces = [pending[i:i + chunk_size + 1] for i in range(0, cut, chunk_size + 1)]
                    pending = pending[cut:]
                for i, piece in enumerate(pieces):
                    writer = writer or records.RecordWriter(_temp_name(output_dir, name, len(manifest["files"])))
                    writer.add(piece)
                    if writer.records == files_per:
                        leftover = [t for p in pieces[i + 1:] for t in p] + pending
                        with _ctrl_c_held():
                            _finish_file(manifest, writer, output_dir, name, position, leftover)
                        writer = None
        with _ctrl_c_held():  # the last file and the complete manifest together
            if writer:
                _finish_file(manifest, writer, output_dir, name, None, pending)
                writer = None
            manifest["discarded_tokens"] = len(pending) if mode == "chunks" else 0
            manifest["skipped"] = vars(skipped)
            manifest["complete"] = True
            manifest["resume"] = None
            storage.write_json(manifest_path(output_dir, name), manifest)
    except BaseException:  # Ctrl-C, a bad input line: keep only complete files
        if writer:
            writer.discard()
        raise
    finally:
        meter.close()
    return manifest


@contextlib.contextmanager
def _ctrl_c_held():
    """Ctrl-C (SIGINT) inside the block takes effect at its end, so a file is never renamed without
    its manifest entry. Signals reach only the main thread; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pressed.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed and callable(previous):
        previous(signal.SIGINT, pressed[0])  # the default handler raises KeyboardInterrupt


def _temp_name(output_dir, name, index):
    return "%s/%s_%d.tfrecords.incomplete" % (output_dir.rstrip("/"), name, index)


def _finish_file(manifest, writer, output_dir, name, position, pending):
    """Rename the file to its final name and record it in the manifest with where to resume:
    after the document at `position` (None at the end), with `pending` tokens carried over."""
    index = len(manifest["files"])
    entry = writer.finish("%s/%s" % (output_dir.rstrip("/"), storage.tfrecords_name(name, index, writer.records)))
    manifest["files"].append(entry)
    manifest["records"] += entry["records"]
    manifest["tokens"] += entry["tokens"]
    if position is not None:
        file_index, doc_index, skip_counts = position
        manifest["resume"] = {"file": file_index, "document": doc_index + 1, "pending": pending,
                              "skipped": dict(zip(SKIP_FIELDS, skip_counts)), "documents": manifest["documents"],
                              "short_documents": manifest["short_documents"]}
        storage.write_json(manifest_path(output_dir, name), manifest)


def _start_or_resume(output_dir, name, arguments, vocab_size, overwrite):
    path = manifest_path(output_dir, name)
    try:
        tf.io.gfile.makedirs(output_dir)
    except tf.errors.OpError as e:
        raise RecordsError("cannot create --output_dir %s: %s" % (output_dir, first_line(e))) from None
    manifest = storage.read_json(path, "manifest") if tf.io.gfile.exists(path) else None
    if manifest and manifest["files"] and not overwrite:
        return _resume(output_dir, manifest, arguments)
    start_over = bool(manifest) or overwrite  # this manifest lists no file: its run left nothing to keep
    own = _own_files(name)
    found = [p.rsplit("/", 1)[-1] for p in tf.io.gfile.glob(storage.tfrecords_glob(output_dir, name))]
    other = next((f for f in found if not own.fullmatch(f)), None)
    if other:
        raise RecordsError("%s already holds %s, which the dataset glob %s_*.tfrecords would also match: refusing "
                              "to mix runs; choose another --output_dir or --name" % (output_dir, other, name))
    if found and not start_over:
        raise RecordsError("%s already holds %s but no %s: refusing to mix runs; pass --overwrite to delete this "
                              "--name's files and start over, or choose another --output_dir or --name"
                              % (output_dir, found[0], path.rsplit("/", 1)[-1]))
    # Starting over: this --name's files, or *.incomplete ones of a run stopped before it had a manifest.
    _delete_own_files(output_dir, name)
    manifest = {"version": MANIFEST_VERSION, "arguments": arguments, "vocab_size": vocab_size, "files": [],
                "records": 0, "tokens": 0, "documents": 0, "short_documents": 0, "discarded_tokens": 0,
                "skipped": vars(SkipCounts()), "complete": False,
                "resume": {"file": 0, "document": 0, "pending": [], "skipped": vars(SkipCounts()),
                           "documents": 0, "short_documents": 0}}
    # Written before any record file, so every final-named file has a manifest to resume from.
    with _ctrl_c_held():
        storage.write_json(path, manifest)
    return manifest


def _resume(output_dir, manifest, arguments):
    """Continue the run `manifest` describes (or return it, complete) if `arguments` would write its
    complete files; it then records `arguments`, as a run with them from scratch would."""
    name = arguments["name"]
    path = manifest_path(output_dir, name)
    changed = _changed(manifest, arguments)
    if changed:
        raise RecordsError(
            "%s was written with other arguments (%s differ) and lists %d complete file(s); %spass --overwrite to "
            "delete %s.manifest.json and the %s_<index>_<records>.tfrecords files and start over, or choose another "
            "--output_dir or --name" % (path, ", ".join(changed), len(manifest["files"]),
                                        "" if manifest["complete"] else "rerun with those arguments to resume, ",
                                        name, name))
    # Files a stopped run renamed before its manifest listed them, and its *.incomplete ones.
    _delete_own_files(output_dir, name, keep={e["name"] for e in manifest["files"]} | {path.rsplit("/", 1)[-1]})
    if not manifest["complete"]:
        manifest["arguments"] = arguments
        resume = manifest["resume"]
        # Counters as they were when the last complete file was written.
        manifest["documents"] = resume["documents"]
        manifest["short_documents"] = resume["short_documents"]
    return manifest


def _changed(manifest, arguments):
    """The arguments that differ from the manifest's in a way that changes its complete files.

    Resuming, two may differ: `inputs` after the file the last complete file ended in (the complete
    files were cut from the files up to it), and `skip_bad_lines` while no line was skipped up to
    there (so none was bad: a run without it would have stopped). A complete run has nothing to
    resume: any difference counts.
    """
    if manifest.get("version") != MANIFEST_VERSION:
        return ["the manifest version"]
    old, resume = manifest["arguments"], manifest["resume"]
    changed = sorted(k for k in arguments if old.get(k) != arguments[k])
    if resume is None:
        return changed
    read = resume["file"] + 1
    same_complete_files = {"inputs": old["inputs"][:read] == arguments["inputs"][:read],
                           "skip_bad_lines": resume["skipped"]["bad_lines"] == 0}
    return [k for k in changed if not same_complete_files.get(k)]


def _own_files(name):
    """The names of this --name's files, exactly: its manifest, record files and their temporary
    names. Another name's never match (`a_1`'s records are a_1_<i>_<n>.tfrecords, `a`'s a_<i>_<n>)."""
    return re.compile(re.escape(name) + r"(\.manifest\.json(\.incomplete)?|_\d+_\d+\.tfrecords"
                                        r"|_\d+\.tfrecords\.incomplete)")


def _delete_own_files(output_dir, name, keep=()):
    """Delete this --name's files in `output_dir` but those in `keep`; the manifest first, so no
    manifest ever lists a deleted file."""
    own = _own_files(name)
    doomed = [f for f in tf.io.gfile.listdir(output_dir) if own.fullmatch(f) and f not in keep]
    for f in sorted(doomed, key=lambda f: f != name + ".manifest.json"):
        tf.io.gfile.remove("%s/%s" % (output_dir.rstrip("/"), f))


class _Progress:
    """A progress bar on stderr (tqdm), when asked for: input bytes read of their total, with an ETA,
    and documents, tokens/s and MB/s of text."""

    def __init__(self, enabled, manifest, read):
        self._bar = None
        self._read = read
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=read.total, initial=read.done, unit="B", unit_scale=True, unit_divisor=1024,
                             file=sys.stderr, dynamic_ncols=True)
        self._documents = manifest["documents"]
        self._start = time.perf_counter()
        self._tokens = self._bytes = 0

    def update(self, characters, tokens):
        self._documents += 1
        self._tokens += tokens
        self._bytes += characters
        if self._bar is not None and self._documents % 64 == 0:
            self._show()

    def _show(self):
        seconds = max(time.perf_counter() - self._start, 1e-9)
        self._bar.update(self._read.done - self._bar.n)
        self._bar.set_postfix_str("%d docs, %.0f tokens/s, %.2f MB/s of text" % (
            self._documents, self._tokens / seconds, self._bytes / seconds / 1e6))

    def close(self):
        if self._bar is not None:
            self._show()
            self._bar.close()


# ---------------------------------------------------------------------------------------------
# Dataset config


def write_dataset_config(path, manifest, output_dir, tokenizer_path, split="train"):
    """Write (or update the `path`/`eval_path` of) a dataset config for these TFRecords."""
    arguments = manifest["arguments"]
    tokenizer = load_tokenizer(tokenizer_path)
    padding = tokenizer.token_to_id(PADDING)
    glob = storage.tfrecords_glob(storage.absolute(output_dir), arguments["name"])
    if tokenizer_path == "gpt2":
        # The original's Pile configs: GPT-2 plus an added <|padding|> = 50257.
        config = {"n_vocab": 50257, "tokenizer_path": "gpt2", "tokenizer_is_pretrained": True,
                  "eos_id": arguments["separator"], "padding_id": 50257}
    else:
        config = {"n_vocab": manifest["vocab_size"],
                  "tokenizer_path": storage.absolute(tokenizer_path),
                  "tokenizer_is_pretrained": False, "eos_id": arguments["separator"],
                  "padding_id": padding if padding is not None else arguments["separator"]}
    if tf.io.gfile.exists(path):
        existing = storage.read_json(path, "dataset config")
        clash = [k for k in config if k in existing and existing[k] != config[k]]
        if clash:
            raise RecordsError("%s exists with other %s; write to another dataset config"
                               % (path, ", ".join(clash)))
        config = dict(existing, **config)
    config["eval_path" if split == "eval" else "path"] = glob
    storage.write_json(path, config)
    return config


# ---------------------------------------------------------------------------------------------
# Command line


def main(args, argv):
    """Run the parsed command line (cli/create_tfrecords.py, `argv` as given); the exit status."""
    options = TextOptions(tuple(args.pile_set_name), args.ftfy, args.wikitext_detokenize, args.skip_bad_lines)
    try:
        options.check()
        manifest = create_tfrecords(args.input, args.output_dir, args.tokenizer, args.name, args.mode,
                                    args.chunk_size, args.files_per, args.separator, args.minimum_size,
                                    args.processes, options, progress=not args.quiet, overwrite=args.overwrite)
        if not manifest["files"]:
            raise RecordsError("the input holds fewer tokens than one record (%d): nothing written; use a "
                                  "smaller --chunk_size or more text" % (args.chunk_size + 1))
        if args.write_dataset_config:
            write_dataset_config(args.write_dataset_config, manifest, args.output_dir, args.tokenizer,
                                 args.dataset_split)
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    except tf.errors.OpError as e:  # unreadable input, unwritable output, missing bucket
        print("error: %s" % first_line(e), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the complete files in %s are kept; resume with: %s"
              % (args.output_dir, _resume_command(argv)), file=sys.stderr)
        return 130
    skipped = manifest["skipped"]
    print("wrote %d file(s), %d records, %d tokens from %d documents to %s (skipped: %d bad lines, %d filtered, "
          "%d empty, %d short; %d tokens left over)" % (
              len(manifest["files"]), manifest["records"], manifest["tokens"], manifest["documents"],
              args.output_dir, skipped["bad_lines"], skipped["filtered"], skipped["empty"],
              manifest["short_documents"], manifest["discarded_tokens"]))
    return 0


def _resume_command(argv):
    """The command that resumes a run given `argv`: the same, without --overwrite (which starts over)."""
    same = [a for a in argv if a != "--overwrite"]
    return shlex.join([sys.executable, "-m", "gpt_neo_mtf.cli.create_tfrecords"] + same)

"""Inspect TFRecords before a run spends TPU hours on them: the work of `gpt-neo-check-dataset` and of
`gpt-neo --check_dataset`; what is checked is in the usage (cli/check_dataset.py).
"""
import bisect
import concurrent.futures
import hashlib
import multiprocessing
import struct
import sys
from dataclasses import dataclass, field
from typing import List

from ..errors import UserError
from ..inputs.tokenizer import load_tokenizer
from ..meshtf import tf
from ..storage import count_in_name, natural_sort_key, read_json
from .records import masked_crc
from .sources import InputError

SAMPLE_CHARACTERS = 500


@dataclass
class FileReport:
    path: str
    records: int = 0
    tokens: int = 0
    min_id: int = None
    max_id: int = None
    shortest: int = None
    longest: int = None
    sha256: str = ""
    bytes: int = 0
    problems: List[str] = field(default_factory=list)
    first_record: list = None
    shortest_lengths: List[int] = field(default_factory=list)  # with `stitch`: the stitch shortest, ascending


def read_records(path, report):
    """Yield the token lists of a TFRecord file, checking its framing; damage goes to report.problems."""
    digest = hashlib.sha256()
    offset = 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while True:
            header = f.read(12)
            digest.update(header)
            if not header:
                break
            if len(header) < 12:
                report.problems.append("truncated record header at byte %d" % offset)
                break
            length, length_crc = struct.unpack("<QI", header)
            if masked_crc(header[:8]) != length_crc:
                report.problems.append("corrupt record length at byte %d (CRC mismatch)" % offset)
                break
            body = f.read(length + 4)
            digest.update(body)
            if len(body) < length + 4:
                report.problems.append("truncated record at byte %d (%d of %d bytes)" % (offset, len(body), length + 4))
                break
            data, data_crc = body[:length], struct.unpack("<I", body[length:])[0]
            if masked_crc(data) != data_crc:
                report.problems.append("corrupt record data at byte %d (CRC mismatch)" % offset)
                break
            try:
                example = tf.train.Example.FromString(data)
                tokens = list(example.features.feature["text"].int64_list.value)
            except Exception:  # protobuf's DecodeError and friends
                report.problems.append("record at byte %d is not a tf.train.Example" % offset)
                break
            offset += 12 + length + 4
            yield tokens
    report.sha256 = digest.hexdigest()
    report.bytes = offset


def check_file(path, n_vocab=None, n_ctx=None, stitch=None):
    """Report on one file; with `stitch` its records are documents (see the module docstring)."""
    report = FileReport(path)
    for tokens in read_records(path, report):
        if stitch:
            bisect.insort(report.shortest_lengths, len(tokens))
            del report.shortest_lengths[stitch:]
        if report.first_record is None:
            report.first_record = tokens
        report.records += 1
        report.tokens += len(tokens)
        if not tokens:
            report.problems.append("record %d is empty" % (report.records - 1))
            continue
        low, high = min(tokens), max(tokens)
        report.min_id = low if report.min_id is None else min(report.min_id, low)
        report.max_id = high if report.max_id is None else max(report.max_id, high)
        report.shortest = len(tokens) if report.shortest is None else min(report.shortest, len(tokens))
        report.longest = len(tokens) if report.longest is None else max(report.longest, len(tokens))
    if n_vocab is not None and report.max_id is not None and report.max_id >= n_vocab:
        report.problems.append("token id %d >= n_vocab %d" % (report.max_id, n_vocab))
    if report.min_id is not None and report.min_id < 0:
        report.problems.append("negative token id %d" % report.min_id)
    if n_ctx is not None and not stitch and report.shortest is not None and report.shortest < n_ctx + 1:
        report.problems.append("a record has %d tokens, fewer than n_ctx + 1 = %d" % (report.shortest, n_ctx + 1))
    named = count_in_name(path)
    damaged = any("truncated" in p or "corrupt" in p for p in report.problems)
    if named is not None and named != report.records and not damaged:
        report.problems.append("the name says %d records but the file holds %d (the reader would skip wrongly "
                               "on resume)" % (named, report.records))
    return report


def check_manifests(files):
    """Problems found comparing the files with the manifests in their directories."""
    problems = []
    by_dir = {}
    for path in files:
        by_dir.setdefault(path.rsplit("/", 1)[0], []).append(path)
    for directory, paths in by_dir.items():
        for manifest_path in tf.io.gfile.glob(directory + "/*.manifest.json"):
            manifest = read_json(manifest_path, "manifest")
            if not manifest.get("complete"):
                problems.append("%s: the conversion did not finish (rerun it with the same arguments)" % manifest_path)
            for entry in manifest.get("files", []):
                path = directory + "/" + entry["name"]
                if not tf.io.gfile.exists(path):
                    problems.append("%s: listed file %s is missing" % (manifest_path, entry["name"]))
    return problems


def check(paths, n_vocab=None, n_ctx=None, tokenizer=None, stitch=None, processes=1, progress=False):
    """Check every file matched by `paths`; print a report (the tool's output); return the number of problems.

    With `stitch`, records are documents that generic_text joins `stitch` at a time (each pattern
    is a dataset of its own): the `stitch` shortest of a pattern's files must hold n_ctx + 1 tokens.
    `processes` files are read at once (in fresh processes); `progress` shows a bar of the bytes read.
    """
    files = []
    by_pattern = {}
    for pattern in paths:
        matched = tf.io.gfile.glob(pattern)
        if not matched:
            raise InputError("%s matches no files" % pattern)
        files += matched
        by_pattern[pattern] = matched
    files = sorted(dict.fromkeys(files), key=natural_sort_key)
    expected = _manifest_entries(files)
    problems = check_manifests(files)
    total_records = total_tokens = 0
    first = None
    shortest = {}
    for path, report in zip(files, _file_reports(files, (n_vocab, n_ctx, stitch), processes, progress)):
        shortest[path] = report.shortest_lengths
        entry = expected.get(path)
        if entry and (entry["sha256"] != report.sha256 or entry["bytes"] != report.bytes):
            report.problems.append("sha256/size differ from the manifest (the file changed after it was written)")
        total_records += report.records
        total_tokens += report.tokens
        first = first or report.first_record
        print("%s: %d records, %d tokens, ids %s..%s, lengths %s..%s%s" % (
            path, report.records, report.tokens, report.min_id, report.max_id, report.shortest, report.longest,
            "" if entry is None else ", sha256 ok" if not report.problems else ""))
        problems += ["%s: %s" % (path, p) for p in report.problems]
    if stitch and n_ctx is not None:
        for pattern, matched in by_pattern.items():
            lengths = sorted(n for path in matched for n in shortest[path])[:stitch]
            if sum(lengths) < n_ctx + 1:
                problems.append(
                    "%s: its %d shortest documents hold %d tokens together (%s), fewer than n_ctx + 1 = %d: joined "
                    "in one example (stitch %d) they would stop training; raise stitch or leave out short "
                    "documents (create_tfrecords --minimum_size)" % (
                        pattern, len(lengths), sum(lengths), " + ".join(map(str, lengths)), n_ctx + 1, stitch))
    print("total: %d files, %d records, %d tokens" % (len(files), total_records, total_tokens))
    if tokenizer is not None and first:
        text = tokenizer.decode(first)
        print("first record, decoded:\n%s\n%s\n%s" % ("-" * 40, text[:SAMPLE_CHARACTERS], "-" * 40))
        if len(text) > SAMPLE_CHARACTERS:
            print("... last %d characters:\n%s\n%s" % (SAMPLE_CHARACTERS, text[-SAMPLE_CHARACTERS:], "-" * 40))
    for problem in problems:
        print("problem: %s" % problem)
    return len(problems)


def _file_reports(files, limits, processes, progress):
    """check_file's report of each file, in order, read by `processes` processes, with a progress bar
    (stderr) of the bytes read when asked for."""
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(tf.io.gfile.stat(path).length for path in files), unit="B", unit_scale=True,
                   unit_divisor=1024, file=sys.stderr, dynamic_ncols=True)
    # Fresh processes ("spawn"): a forked copy of a process running TensorFlow's threads may hang.
    pool = concurrent.futures.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) \
        if processes > 1 else None
    try:
        reports = pool.map(check_file, files, *zip(*[limits] * len(files))) if pool else \
            (check_file(path, *limits) for path in files)
        for report in reports:
            if bar is not None:
                bar.update(report.bytes)
            yield report
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)
        if bar is not None:
            bar.close()


def _manifest_entries(files):
    entries = {}
    for directory in {p.rsplit("/", 1)[0] for p in files}:
        for manifest_path in tf.io.gfile.glob(directory + "/*.manifest.json"):
            for entry in read_json(manifest_path, "manifest").get("files", []):
                entries[directory + "/" + entry["name"]] = entry
    return entries


def main(args):
    """Run the parsed command line (cli/check_dataset.py); the exit status."""
    try:
        tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
        problems = check(args.paths, args.n_vocab, args.n_ctx, tokenizer, stitch=args.stitch,
                         processes=args.processes, progress=not args.quiet)
    except UserError as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    if problems:
        print("error: %d problem(s) found" % problems, file=sys.stderr)
        return 2
    return 0

"""The TFRecords converter on real files with the real GPT-2 tokenizer: documents -> records
(chunks of chunk_size + 1 tokens, or one per document), the manifest, bad input, 1 vs 2
processes, resuming after kill -9, Ctrl-C or a failed run (and starting over), and the dataset config
it writes for the trainer."""
import functools
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import zstandard

from conftest import REPO, SAMPLE, TINY
from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf import storage
from gpt_neo_mtf.tfrecords_tools import create_tfrecords as converter
from gpt_neo_mtf.tfrecords_tools import records as records_module
from gpt_neo_mtf.cli.create_tfrecords import main
from gpt_neo_mtf.tfrecords_tools.create_tfrecords import RecordsError, create_tfrecords
from gpt_neo_mtf.tfrecords_tools.sources import TextOptions

EOS = 50256
CHUNK = 16

DOCS = [
    "Hello world.",  # shorter than a chunk
    "The quick brown fox jumps over the lazy dog. " * 6,  # several chunks long
    "Short one.",
    ["First paragraph of a list document.", "Second paragraph."],  # joined by a blank line
    "Ünïcödé text \u2014 with \u201cquotes\u201d and an emoji \U0001F642 spanning several bytes.",
    "  leading and trailing spaces are kept  \n",
]
TXT = "A plain text file.\nIt has two lines and is read as one document.\n"


def text_of(doc):
    return "\n\n".join(doc) if isinstance(doc, list) else doc


# ---------------------------------------------------------------------------------------------
# Helpers: inputs in every format, reading records and the manifest back


def json_line(doc, pile_set_name=None, **meta):
    record = {"text": doc}
    if pile_set_name is not None:
        meta["pile_set_name"] = pile_set_name
    if meta:
        record["meta"] = meta
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_lines(path, lines, frames=1):
    """Write JSON lines (str or raw bytes each), compressed by the file's suffix: .zst (in `frames`
    concatenated zstd frames), .gz, .xz, or plain."""
    path = str(path)
    parts = [line.encode("utf-8") if isinstance(line, str) else line for line in lines]
    if path.endswith(".zst"):
        step = max(1, -(-len(parts) // frames))
        data = b"".join(zstandard.ZstdCompressor().compress(b"".join(parts[i:i + step]))
                        for i in range(0, len(parts), step))
    elif path.endswith(".gz"):
        data = gzip.compress(b"".join(parts))
    elif path.endswith(".xz"):
        data = lzma.compress(b"".join(parts))
    else:
        data = b"".join(parts)
    with open(path, "wb") as f:
        f.write(data)
    return path


def write_docs(path, docs, frames=1):
    return write_lines(path, [json_line(doc, i=i) for i, doc in enumerate(docs)], frames)


def read_records(path):
    return [list(tf.train.Example.FromString(r).features.feature["text"].int64_list.value)
            for r in tf.io.tf_record_iterator(path)]


def encode(tokenizer, text):
    return tokenizer.encode(text).ids


def expected_stream(tokenizer, texts, separator=EOS):
    stream = []
    for text in texts:
        stream += encode(tokenizer, text) + [separator]
    return stream


def read_manifest(out, name):
    with open(os.path.join(str(out), name + ".manifest.json"), "rb") as f:
        return json.loads(f.read())


def check_directory(out, name):
    """The manifest describes exactly the files in `out` (nothing else there, no *.incomplete):
    names <name>_<index>_<records>.tfrecords, records, tokens, bytes and sha256 of each file, and
    the totals. Returns (manifest, all records in order)."""
    out = str(out)
    manifest = read_manifest(out, name)
    assert manifest["complete"] is True and manifest["resume"] is None
    names = [entry["name"] for entry in manifest["files"]]
    assert names == ["%s_%d_%d.tfrecords" % (name, i, e["records"]) for i, e in enumerate(manifest["files"])]
    assert sorted(os.listdir(out)) == sorted(names + [name + ".manifest.json"])
    everything = []
    for entry in manifest["files"]:
        path = os.path.join(out, entry["name"])
        with open(path, "rb") as f:
            data = f.read()
        assert entry["bytes"] == len(data) == os.path.getsize(path)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        in_file = read_records(path)
        assert entry["records"] == len(in_file) > 0  # never an empty file
        assert entry["tokens"] == sum(len(r) for r in in_file)
        everything += in_file
    assert manifest["records"] == len(everything)
    assert manifest["tokens"] == sum(len(r) for r in everything)
    return manifest, everything


def check_chunks(manifest, recs, stream, chunk, files_per):
    """Chunks mode: the records are the stream cut into chunk + 1 pieces; only the final partial
    piece is left out (and counted as discarded_tokens); files hold files_per records, the last fewer."""
    length = chunk + 1
    n = len(stream) // length
    assert n >= 1
    assert len(recs) == n and all(len(r) == length for r in recs)
    assert [t for r in recs for t in r] == stream[:n * length]
    assert manifest["discarded_tokens"] == len(stream) - n * length < length
    counts = [files_per] * (n // files_per) + ([n % files_per] if n % files_per else [])
    assert [e["records"] for e in manifest["files"]] == counts


def directory_bytes(out):
    """{file name: bytes} of everything in a directory."""
    result = {}
    for entry in sorted(os.listdir(str(out))):
        with open(os.path.join(str(out), entry), "rb") as f:
            result[entry] = f.read()
    return result


def cli(capsys, *args):
    """Run the command line in this process; returns (exit code, stdout, stderr)."""
    code = main([str(a) for a in args] + ["--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_error(err):
    """The single "error:" line of a failed run (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def no_partial_final_file(out, name):
    """After a failure: every file under a final name is complete and listed in the manifest."""
    out = str(out)
    finals = [p for p in os.listdir(out) if p.endswith(".tfrecords")] if os.path.isdir(out) else []
    if not finals:
        return
    listed = {e["name"]: e for e in read_manifest(out, name)["files"]}
    for p in finals:
        assert p in listed, p
        with open(os.path.join(out, p), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == listed[p]["sha256"]
        assert len(read_records(os.path.join(out, p))) == listed[p]["records"]


@functools.lru_cache(maxsize=None)
def sample_documents(split):
    """[(text, pile_set_name)] of the shipped sample corpus."""
    with open(os.path.join(SAMPLE, split + ".jsonl.zst"), "rb") as f:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8").read()
    return tuple((r["text"], r["meta"]["pile_set_name"]) for r in map(json.loads, text.splitlines()) if r)


# ---------------------------------------------------------------------------------------------
# Round trips


def test_tokenizer_is_gpt2(gpt2_tokenizer):
    assert gpt2_tokenizer.encode("Hello world").ids == [15496, 995]
    assert gpt2_tokenizer.token_to_id("<|endoftext|>") == EOS


def test_chunks_round_trip_keeps_short_documents(tmp_path, gpt2_tokenizer):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "1_notes.txt").write_text(TXT, encoding="utf-8")
    write_docs(inputs / "2_docs.jsonl.zst", DOCS)
    (inputs / "3_readme.md").write_text("not an input")
    (inputs / "4_other.json").write_text(json.dumps({"text": "not an input either"}))
    out = tmp_path / "out"
    manifest = create_tfrecords(str(inputs), str(out), "gpt2", name="rt", chunk_size=CHUNK, files_per=3)
    assert manifest == read_manifest(out, "rt")
    on_disk, recs = check_directory(out, "rt")
    # Natural file order: the .txt (1_) before the .jsonl.zst (2_); every token of every document.
    stream = expected_stream(gpt2_tokenizer, [TXT] + [text_of(d) for d in DOCS])
    check_chunks(manifest, recs, stream, CHUNK, files_per=3)
    assert len(recs) >= 7 and len(recs) % 3  # several files, the last one partial
    assert manifest["documents"] == 1 + len(DOCS)
    assert manifest["arguments"]["inputs"] == [str(inputs / "1_notes.txt"), str(inputs / "2_docs.jsonl.zst")]
    # The short documents are in the records (the original dropped them), each followed by EOS.
    flat = [t for r in recs for t in r]
    for short in ("Hello world.", "Short one."):
        ids = encode(gpt2_tokenizer, short) + [EOS]
        assert any(flat[i:i + len(ids)] == ids for i in range(len(flat))), short


def test_documents_mode_one_record_per_document(tmp_path, gpt2_tokenizer):
    path = write_docs(tmp_path / "docs.jsonl.zst", DOCS)
    out = tmp_path / "out"
    manifest = create_tfrecords(path, str(out), "gpt2", name="doc", mode="documents", files_per=4)
    _, recs = check_directory(out, "doc")
    assert recs == [encode(gpt2_tokenizer, text_of(d)) + [EOS] for d in DOCS]
    assert [e["records"] for e in manifest["files"]] == [4, 2]
    assert manifest["discarded_tokens"] == 0 and manifest["short_documents"] == 0


def test_documents_mode_minimum_size_skips_and_counts_short_documents(tmp_path, gpt2_tokenizer):
    path = write_docs(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "out"
    minimum = 6  # tokens, separator included
    manifest = create_tfrecords(path, str(out), "gpt2", name="m", mode="documents", minimum_size=minimum,
                                separator=11)
    _, recs = check_directory(out, "m")
    encoded = [encode(gpt2_tokenizer, text_of(d)) + [11] for d in DOCS]
    assert recs == [e for e in encoded if len(e) >= minimum]
    assert manifest["short_documents"] == sum(len(e) < minimum for e in encoded) == 2
    assert manifest["documents"] == len(DOCS)


@pytest.mark.parametrize("files_per", [1, 2, 5, 1000])
def test_files_per_is_respected(tmp_path, gpt2_tokenizer, files_per):
    path = write_docs(tmp_path / "docs.jsonl.zst", DOCS)
    out = tmp_path / "out"
    manifest = create_tfrecords(path, str(out), "gpt2", name="fp", chunk_size=CHUNK, files_per=files_per)
    _, recs = check_directory(out, "fp")
    check_chunks(manifest, recs, expected_stream(gpt2_tokenizer, [text_of(d) for d in DOCS]), CHUNK, files_per)


def test_exact_multiple_of_files_per_leaves_no_empty_file(tmp_path, gpt2_tokenizer):
    path = write_docs(tmp_path / "docs.jsonl.zst", DOCS)
    stream = expected_stream(gpt2_tokenizer, [text_of(d) for d in DOCS])
    n = len(stream) // (CHUNK + 1)
    out = tmp_path / "out"
    manifest = create_tfrecords(path, str(out), "gpt2", name="ex", chunk_size=CHUNK, files_per=n)
    assert [e["name"] for e in manifest["files"]] == ["ex_0_%d.tfrecords" % n]
    _, recs = check_directory(out, "ex")
    check_chunks(manifest, recs, stream, CHUNK, n)


@pytest.mark.parametrize("suffix,frames", [(".jsonl", 1), (".jsonl.gz", 1), (".jsonl.xz", 1),
                                           (".jsonl.zst", 1), (".jsonl.zst", 4)])
def test_every_input_format_gives_the_same_records(tmp_path, gpt2_tokenizer, suffix, frames):
    path = write_docs(tmp_path / ("docs" + suffix), DOCS, frames=frames)
    out = tmp_path / "out"
    create_tfrecords(path, str(out), "gpt2", name="f", mode="documents")
    _, recs = check_directory(out, "f")
    assert recs == [encode(gpt2_tokenizer, text_of(d)) + [EOS] for d in DOCS]


def test_glob_input_natural_order_multi_frame_zst_and_custom_separator(tmp_path, gpt2_tokenizer):
    docs_a = ["alpha " * 20, "beta"]
    docs_b = ["gamma delta", "epsilon " * 9, "zeta"]
    write_docs(tmp_path / "part_10.jsonl.zst", docs_b, frames=3)
    write_docs(tmp_path / "part_9.jsonl.zst", docs_a, frames=2)
    out = tmp_path / "out"
    manifest = create_tfrecords(str(tmp_path / "part_*.jsonl.zst"), str(out), "gpt2", name="g", chunk_size=8,
                                files_per=4, separator=11)
    # part_9 before part_10 (natural order); every frame of a file is read.
    _, recs = check_directory(out, "g")
    check_chunks(manifest, recs, expected_stream(gpt2_tokenizer, docs_a + docs_b, separator=11), 8, 4)
    assert EOS not in [t for r in recs for t in r]


def test_directory_input_picks_up_supported_formats_only(tmp_path, gpt2_tokenizer):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_docs(inputs / "b_2.jsonl.zst", ["second file " * 5])
    write_docs(inputs / "b_10.jsonl.gz", ["third file " * 5])
    write_docs(inputs / "b_11.jsonl.xz", ["fourth file " * 5])
    write_docs(inputs / "c_1.jsonl", ["fifth file " * 5])
    (inputs / "a.txt").write_text("first file " * 5)
    (inputs / "c.json").write_text("{}")
    (inputs / "d.zst").write_bytes(zstandard.ZstdCompressor().compress(b"ignored"))
    (inputs / "e.jsonl.bz2").write_bytes(b"ignored")
    out = tmp_path / "out"
    manifest = create_tfrecords(str(inputs), str(out), "gpt2", name="d", mode="documents")
    _, recs = check_directory(out, "d")
    texts = ["first file ", "second file ", "third file ", "fourth file ", "fifth file "]
    assert recs == [encode(gpt2_tokenizer, t * 5) + [EOS] for t in texts]
    assert [os.path.basename(p) for p in manifest["arguments"]["inputs"]] == [
        "a.txt", "b_2.jsonl.zst", "b_10.jsonl.gz", "b_11.jsonl.xz", "c_1.jsonl"]


def test_subdirectory_named_like_an_input_is_not_read(tmp_path, gpt2_tokenizer, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_docs(inputs / "a.jsonl", ["the only document"])
    (inputs / "sub.jsonl").mkdir()
    write_docs(inputs / "sub.jsonl" / "nested.jsonl", ["not read: directories are not scanned recursively"])
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--input", inputs, "--output_dir", out, "--name", "s", "--mode", "documents")
    assert code == 0, err
    manifest, recs = check_directory(out, "s")
    assert recs == [encode(gpt2_tokenizer, "the only document") + [EOS]]
    assert manifest["arguments"]["inputs"] == [str(inputs / "a.jsonl")]


def test_several_inputs_and_overlapping_globs_are_read_once(tmp_path, gpt2_tokenizer):
    a = write_docs(tmp_path / "a.jsonl", ["from a"])
    b = write_docs(tmp_path / "b.jsonl", ["from b"])
    out = tmp_path / "out"
    code = main(["--input", b, str(tmp_path / "*.jsonl"), a, "--output_dir", str(out), "--name", "o",
                 "--mode", "documents", "--quiet"])
    assert code == 0
    _, recs = check_directory(out, "o")
    assert recs == [encode(gpt2_tokenizer, "from a") + [EOS], encode(gpt2_tokenizer, "from b") + [EOS]]


def test_text_options_ftfy_and_wikitext_detokenize(tmp_path, gpt2_tokenizer):
    docs = ["The price is 1 @,@ 000 dollars , is n't it ?", "mojibake: cafÃ©"]
    path = write_docs(tmp_path / "w.jsonl", docs)
    for options, expected in [
            (TextOptions(), docs),
            (TextOptions(wikitext_detokenize=True), ["The price is 1,000 dollars, isn't it?", docs[1]]),
            (TextOptions(ftfy=True), [docs[0], "mojibake: café"])]:
        out = tmp_path / ("out_%d_%d" % (options.ftfy, options.wikitext_detokenize))
        create_tfrecords(path, str(out), "gpt2", name="t", mode="documents", options=options)
        _, recs = check_directory(out, "t")
        assert recs == [encode(gpt2_tokenizer, t) + [EOS] for t in expected]


# ---------------------------------------------------------------------------------------------
# Filters and skips


def test_pile_set_name_filter_is_repeatable_and_counted(tmp_path, gpt2_tokenizer, capsys):
    lines = [json_line("keep one", "Pile-CC"), json_line("drop one", "Github"), json_line("no meta"),
             json_line("keep two", "ArXiv"), json_line("drop two", "Enron Emails"),
             '{"text": "meta not an object", "meta": 3}\n']
    path = write_lines(tmp_path / "pile.jsonl.zst", lines)
    out = tmp_path / "out"
    code, stdout, _ = cli(capsys, "--input", path, "--output_dir", out, "--name", "p", "--mode", "documents",
                          "--pile_set_name", "Pile-CC", "--pile_set_name", "ArXiv")
    assert code == 0
    manifest, recs = check_directory(out, "p")
    assert recs == [encode(gpt2_tokenizer, t) + [EOS] for t in ("keep one", "keep two")]
    assert manifest["skipped"] == {"bad_lines": 0, "filtered": 4, "empty": 0}
    assert manifest["arguments"]["pile_set_names"] == ["Pile-CC", "ArXiv"]
    assert "4 filtered" in stdout


def test_empty_and_whitespace_documents_are_skipped_and_counted(tmp_path, gpt2_tokenizer, capsys):
    lines = [json_line("first"), json_line(""), json_line("  \n\t "), "\n", "   \n", json_line(["", " "]),
             json_line("last")]
    path = write_lines(tmp_path / "e.jsonl", lines)
    (tmp_path / "blank.txt").write_text(" \n\n ")
    out = tmp_path / "out"
    code, stdout, _ = cli(capsys, "--input", path, tmp_path / "blank.txt", "--output_dir", out, "--name", "e",
                          "--mode", "documents")
    assert code == 0
    manifest, recs = check_directory(out, "e")
    assert recs == [encode(gpt2_tokenizer, "first") + [EOS], encode(gpt2_tokenizer, "last") + [EOS]]
    # Blank lines are not documents; empty and whitespace-only texts (and .txt files) are skipped.
    assert manifest["skipped"] == {"bad_lines": 0, "filtered": 0, "empty": 4}
    assert "4 empty" in stdout


BAD_LINES = {
    "invalid json": b"this is not JSON\n",
    "missing text": b'{"meta": {"title": "no text"}}\n',
    "text not a string": b'{"text": 5}\n',
    "list of non-strings": b'{"text": ["a", 1]}\n',
    "a json list": b"[1, 2]\n",
    "null": b"null\n",
    "truncated object": b'{"text": "cut off\n',
    "non-utf-8": b'{"text": "caf\xe9"}\n',
}


def test_skip_bad_lines_skips_and_counts(tmp_path, gpt2_tokenizer, capsys):
    lines = [json_line("good one")] + list(BAD_LINES.values()) + [json_line("good two")]
    path = write_lines(tmp_path / "bad.jsonl.zst", lines, frames=3)
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "--input", path, tmp_path / "latin1.txt", "--output_dir", out,
                            "--name", "s", "--mode", "documents", "--skip_bad_lines")
    assert code == 0, err
    manifest, recs = check_directory(out, "s")
    assert recs == [encode(gpt2_tokenizer, "good one") + [EOS], encode(gpt2_tokenizer, "good two") + [EOS]]
    assert manifest["skipped"] == {"bad_lines": len(BAD_LINES) + 1, "filtered": 0, "empty": 0}
    assert "%d bad lines" % (len(BAD_LINES) + 1) in stdout


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
def test_bad_line_without_skip_names_file_and_line(tmp_path, capsys, kind):
    # More good documents than a tokenizer batch before the bad line (whether files are complete
    # before the reader, which runs ahead of the tokenizer, meets it does not matter).
    lines = [json_line("good line number %d" % i) for i in range(300)] + ["\n", BAD_LINES[kind],
                                                                          json_line("never reached")]
    path = write_lines(tmp_path / "bad.jsonl.zst", lines)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--input", path, "--output_dir", out, "--name", "b", "--chunk_size", "4",
                       "--files_per", "2")
    assert code == 2
    line = one_error(err)
    assert path in line and "line 302" in line and "--skip_bad_lines" in line
    no_partial_final_file(out, "b")


def test_non_utf8_txt_file_is_named(tmp_path, capsys):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait " * 10)
    code, _, err = cli(capsys, "--input", path, "--output_dir", tmp_path / "out", "--chunk_size", "4")
    assert code == 2
    line = one_error(err)
    assert str(path) in line and "UTF-8" in line


def test_lone_surrogate_is_a_bad_line(tmp_path, gpt2_tokenizer, capsys):
    lines = [json_line("good one"), '{"text": "broken \\ud83d emoji"}\n', json_line("good two")]
    path = write_lines(tmp_path / "sur.jsonl", lines)
    code, _, err = cli(capsys, "--input", path, "--output_dir", tmp_path / "out", "--mode", "documents")
    assert code == 2
    line = one_error(err)
    assert path in line and "line 2" in line
    out = tmp_path / "skipped"
    code, _, err = cli(capsys, "--input", path, "--output_dir", out, "--name", "s", "--mode", "documents",
                       "--skip_bad_lines")
    assert code == 0, err
    manifest, recs = check_directory(out, "s")
    assert recs == [encode(gpt2_tokenizer, t) + [EOS] for t in ("good one", "good two")]
    assert manifest["skipped"]["bad_lines"] == 1


# ---------------------------------------------------------------------------------------------
# Bad input and bad arguments on the command line: one "error:" line, exit 2, no half file


def test_corrupt_zst_names_the_file(tmp_path, capsys):
    good = write_docs(tmp_path / "a_good.jsonl.zst", ["fine text " * 40])
    bad = tmp_path / "b_bad.jsonl.zst"
    bad.write_bytes(b"this is not zstandard data at all" * 20)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--input", good, bad, "--output_dir", out, "--name", "c", "--chunk_size", "8",
                       "--files_per", "3")
    assert code == 2
    line = one_error(err)
    assert str(bad) in line and "corrupt" in line
    no_partial_final_file(out, "c")


def big_lines(count, seed=0):
    """`count` JSON lines of varied, poorly compressible text (so a zstd frame has several blocks)."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "mu", "nu"]
    return [json_line(" ".join(rng.choice(words) + str(rng.randrange(1000)) for _ in range(60)))
            for _ in range(count)]


def test_zst_truncated_mid_line_names_the_file(tmp_path, capsys):
    data = zstandard.ZstdCompressor().compress("".join(big_lines(1500)).encode())
    path = tmp_path / "trunc.jsonl.zst"
    path.write_bytes(data[:len(data) // 2])
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--input", path, "--output_dir", out, "--name", "t", "--chunk_size", "64",
                       "--files_per", "20")
    assert code == 2
    assert str(path) in one_error(err)
    no_partial_final_file(out, "t")


def test_zst_truncated_inside_a_frame_is_an_error(tmp_path, capsys):
    first = zstandard.ZstdCompressor().compress(json_line("the first frame is whole " * 10).encode())
    second = zstandard.ZstdCompressor().compress("".join(big_lines(200, seed=1)).encode())
    path = tmp_path / "trunc.jsonl.zst"
    path.write_bytes(first + second[:len(second) // 2])  # the second frame loses its second half
    code, _, err = cli(capsys, "--input", path, "--output_dir", tmp_path / "out", "--chunk_size", "8",
                       "--skip_bad_lines")
    assert code == 2
    line = one_error(err)
    assert str(path) in line and ("truncated" in line or "corrupt" in line)


def test_input_matching_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.md").write_text("not an input")
    out = tmp_path / "out"
    for missing in (str(tmp_path / "nothing_*.jsonl.zst"), str(tmp_path / "empty"), str(tmp_path / "other"),
                    str(tmp_path / "missing.jsonl")):
        code, _, err = cli(capsys, "--input", missing, "--output_dir", out)
        assert code == 2
        assert "no input files at %s" % missing in one_error(err)
    assert not os.path.exists(str(out))


def test_glob_matching_an_unsupported_file_is_refused(tmp_path, capsys):
    (tmp_path / "data.json").write_text(json.dumps({"text": "a .json file is not JSON lines"}))
    code, _, err = cli(capsys, "--input", tmp_path / "data.*", "--output_dir", tmp_path / "out")
    assert code == 2
    assert "data.json is not a supported input" in one_error(err)


@pytest.mark.parametrize("separator", ["50257", "-1", "100000"])
def test_separator_outside_the_vocabulary(tmp_path, capsys, separator):
    path = write_docs(tmp_path / "d.jsonl", ["some text"])
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--input", path, "--output_dir", out, "--separator", separator)
    assert code == 2
    assert "--separator %s is outside the tokenizer's vocabulary (0..50256)" % separator in one_error(err)
    assert not os.path.exists(str(out))


@pytest.mark.parametrize("flag,value", [("--chunk_size", "0"), ("--files_per", "0"), ("--processes", "0"),
                                        ("--minimum_size", "-1")])
def test_numbers_out_of_range(tmp_path, capsys, flag, value):
    path = write_docs(tmp_path / "d.jsonl", ["some text"])
    code, _, err = cli(capsys, "--input", path, "--output_dir", tmp_path / "out", flag, value)
    assert code == 2
    assert flag in one_error(err)


def test_unknown_mode_and_missing_input_are_usage_errors(tmp_path, capsys):
    for argv in (["--input", str(tmp_path), "--mode", "lines"], ["--output_dir", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--pile_set_name" in text
    assert "--overwrite start over: first delete this --name's files in --output_dir" in text
    assert "exits with status 130" in text


def test_progress_bar_counts_input_bytes_to_their_total(tmp_path, capsys):
    source = os.path.join(SAMPLE, "val.jsonl.zst")
    assert main(["--input", source, "--output_dir", str(tmp_path / "out"), "--chunk_size", "32"]) == 0
    bar = capsys.readouterr().err.replace("\r", "\n").splitlines()
    final = [line for line in bar if line.startswith("100%")][-1]
    total = os.path.getsize(source) / 1024
    assert "{0:.1f}k/{0:.1f}k".format(total) in final and "7 docs" in final, bar


def test_unwritable_output_dir(tmp_path, capsys):
    path = write_docs(tmp_path / "d.jsonl", ["some text " * 20])
    (tmp_path / "a_file").write_text("a regular file")
    out = tmp_path / "a_file" / "records"
    code, _, err = cli(capsys, "--input", path, "--output_dir", out, "--chunk_size", "4")
    assert code == 2
    line = one_error(err)
    assert str(out) in line and "cannot create --output_dir" in line
    assert (tmp_path / "a_file").read_text() == "a regular file"


def test_too_little_text_for_one_record(tmp_path, capsys):
    path = write_docs(tmp_path / "d.jsonl", ["tiny"])
    code, _, err = cli(capsys, "--input", path, "--output_dir", tmp_path / "out", "--chunk_size", "64")
    assert code == 2
    assert "fewer tokens than one record (65)" in one_error(err)
    assert not [p for p in os.listdir(str(tmp_path / "out")) if ".tfrecords" in p]
    # No file was written, so the smaller --chunk_size the message suggests is not refused.
    code, _, err = cli(capsys, "--input", path, "--output_dir", tmp_path / "out", "--chunk_size", "1")
    assert code == 0, err
    assert read_manifest(tmp_path / "out", "openwebtext")["records"] == 1


# ---------------------------------------------------------------------------------------------
# The manifest and the files: valid TFRecords, tf.train.Example with an int64 feature "text"


def test_manifest_and_files_read_back_with_tensorflow(tmp_path, gpt2_tokenizer, capsys):
    path = write_docs(tmp_path / "docs.jsonl.zst", DOCS)
    out = tmp_path / "out"
    code, stdout, _ = cli(capsys, "--input", path, "--output_dir", out, "--name", "man", "--chunk_size", CHUNK,
                          "--files_per", "3", "--tokenizer", "gpt2")
    assert code == 0
    manifest, recs = check_directory(out, "man")
    assert manifest["arguments"] == {
        "inputs": [path], "tokenizer": "gpt2", "mode": "chunks", "chunk_size": CHUNK, "files_per": 3,
        "separator": EOS, "minimum_size": 1, "name": "man", "pile_set_names": [], "ftfy": False,
        "wikitext_detokenize": False, "skip_bad_lines": False}
    assert manifest["vocab_size"] == 50257
    assert manifest["documents"] == len(DOCS)
    assert manifest["skipped"] == {"bad_lines": 0, "filtered": 0, "empty": 0}
    assert stdout.strip() == ("wrote %d file(s), %d records, %d tokens from %d documents to %s (skipped: 0 bad "
                              "lines, 0 filtered, 0 empty, 0 short; %d tokens left over)" % (
                                  len(manifest["files"]), len(recs), manifest["tokens"], len(DOCS), out,
                                  manifest["discarded_tokens"]))
    paths = [os.path.join(str(out), e["name"]) for e in manifest["files"]]

    # tf.data reads and parses them as the trainer does (CRCs are checked on read).
    with tf.Graph().as_default():
        ds = tf.data.TFRecordDataset(paths).map(
            lambda r: tf.io.parse_single_example(r, {"text": tf.io.VarLenFeature(tf.int64)})["text"].values)
        item = tf.data.make_one_shot_iterator(ds).get_next()
        read = []
        with tf.Session() as session:
            while True:
                try:
                    read.append(list(session.run(item)))
                except tf.errors.OutOfRangeError:
                    break
    assert read == recs

    # Our framing is byte for byte what TensorFlow's own writer makes, and an Example holds only "text".
    for p in paths:
        reference = str(tmp_path / "reference.tfrecords")
        with tf.io.TFRecordWriter(reference) as writer:
            for record in tf.io.tf_record_iterator(p):
                example = tf.train.Example.FromString(record)
                assert list(example.features.feature) == ["text"]
                assert example.features.feature["text"].WhichOneof("kind") == "int64_list"
                writer.write(record)
        with open(reference, "rb") as a, open(p, "rb") as b:
            assert a.read() == b.read()


def test_corrupted_byte_is_caught_by_tensorflow_and_the_checksum(tmp_path):
    path = write_docs(tmp_path / "docs.jsonl", DOCS)
    out = tmp_path / "out"
    manifest = create_tfrecords(path, str(out), "gpt2", name="x", chunk_size=CHUNK, files_per=1000)
    target = os.path.join(str(out), manifest["files"][0]["name"])
    data = bytearray(open(target, "rb").read())
    data[30] ^= 0x01  # inside the first record's data
    open(target, "wb").write(bytes(data))
    assert hashlib.sha256(data).hexdigest() != manifest["files"][0]["sha256"]
    with pytest.raises(tf.errors.DataLossError):
        list(tf.io.tf_record_iterator(target))


# ---------------------------------------------------------------------------------------------
# 1 vs 2 processes


def test_output_is_identical_for_one_and_two_processes(tmp_path, monkeypatch):
    # One input file for two processes; small batches so several are in flight at once.
    source = os.path.join(SAMPLE, "train.jsonl.zst")
    args = dict(name="p", chunk_size=48, files_per=40)
    one = tmp_path / "one"
    create_tfrecords(source, str(one), "gpt2", processes=1, **args)
    monkeypatch.setattr(converter, "BATCH_DOCUMENTS", 4)
    two = tmp_path / "two"
    create_tfrecords(source, str(two), "gpt2", processes=2, **args)
    check_directory(two, "p")
    assert len(os.listdir(str(one))) > 10
    assert directory_bytes(one) == directory_bytes(two)  # the manifest included


def test_bad_line_with_two_processes_stops_cleanly(tmp_path, capsys):
    # More documents than the batches in flight, so files are complete before the bad line is read.
    lines = [json_line("good line number %d" % i) for i in range(1500)] + [b"oops\n"]
    path = write_lines(tmp_path / "b.jsonl", lines)
    out = tmp_path / "out"
    code, _, err = cli(capsys, "--input", path, "--output_dir", out, "--name", "b", "--chunk_size", "4",
                       "--files_per", "50", "--processes", "2")
    assert code == 2
    assert "%s line 1501" % path in one_error(err)
    assert [p for p in os.listdir(str(out)) if p.endswith(".tfrecords")]
    no_partial_final_file(out, "b")


# ---------------------------------------------------------------------------------------------
# Resuming


WORDS = ["the ", "a ", "this ", "our ", "that ", "their "]


def big_corpus(path, copies):
    """The sample corpus `copies` times with variations (a few MB), plus documents to filter,
    empty ones and bad lines, in several zstd frames; returns (path, JSON-lines bytes, count of
    each kind of odd line)."""
    lines = []
    for copy in range(copies):
        for i, (text, pile) in enumerate(sample_documents("train")):
            lines.append(json_line("(copy %d) %s" % (copy, text.replace("the ", WORDS[copy % len(WORDS)])), pile))
            if i % 10 == 0:
                lines.append(json_line("An off-topic document %d/%d." % (copy, i), "Enron Emails"))
                lines.append(json_line(" \n ", pile))
                lines.append(b'{"text": broken\n')
    write_lines(path, lines, frames=7)
    size = sum(len(line.encode("utf-8") if isinstance(line, str) else line) for line in lines)
    return str(path), size, copies * len(range(0, len(sample_documents("train")), 10))


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    """A few MB corpus (big_corpus), the flags converting it into many files, and the output of an
    uninterrupted run: (flags without --output_dir, that output, count of each kind of odd line)."""
    root = tmp_path_factory.mktemp("big_run")
    source, size, odd = big_corpus(root / "big.jsonl.zst", copies=5)
    assert size > 3 << 20  # ~4 MB of JSON lines (~1 MB compressed)
    flags = ["--input", source, "--name", "big", "--chunk_size", "64", "--files_per", "50",
             "--pile_set_name", "PythonDocs", "--pile_set_name", "PythonDocstrings", "--skip_bad_lines", "--quiet"]
    clean = root / "clean"
    assert main(flags + ["--output_dir", str(clean)]) == 0
    return flags, clean, odd


def run_and_stop(flags, out, name, files, how=signal.SIGKILL):
    """Start the CLI in a session of its own and, once the manifest lists `files` files (it must still
    be running then), send `how` to its process group: kill -9, or SIGINT as a terminal's Ctrl-C sends it
    (to the worker processes too). Returns (the ended process, its stderr, the count of final-named files)."""
    process = subprocess.Popen([sys.executable, "-m", "gpt_neo_mtf.cli.create_tfrecords"] + flags, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while True:
            assert process.poll() is None, "the run ended before it was stopped: %s" % (process.communicate(),)
            assert time.monotonic() < deadline, "the manifest listed no %d files in 60 s" % files
            try:
                if len(read_manifest(out, name)["files"]) >= files:
                    break
            except (OSError, ValueError):
                time.sleep(0.005)  # no manifest yet, or one being replaced: look again
                continue
            time.sleep(0.005)
        os.killpg(process.pid, how)
        err = process.communicate(timeout=60)[1].decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    stopped = read_manifest(out, name)
    assert not stopped["complete"] and stopped["resume"] is not None
    finals = [p for p in os.listdir(str(out)) if p.endswith(".tfrecords")]
    assert len(finals) >= files
    return process, err, len(finals)


def test_kill_9_mid_run_then_rerun_gives_identical_output(tmp_path, big_run):
    flags, clean, odd = big_run
    killed = tmp_path / "killed"
    flags = flags + ["--output_dir", str(killed)]
    # Killed early, rerun and killed again later (after the first tokenizer batch), rerun to the end.
    process, _, first = run_and_stop(flags, killed, "big", 2)
    assert process.returncode == -signal.SIGKILL  # killed, not ended
    process, _, second = run_and_stop(flags, killed, "big", 160)
    assert process.returncode == -signal.SIGKILL
    assert main(flags) == 0

    manifest, _ = check_directory(clean, "big")
    assert len(manifest["files"]) > second >= first >= 2  # both kills landed before the end
    assert manifest["skipped"] == {"bad_lines": odd, "filtered": odd, "empty": odd}
    check_directory(killed, "big")
    assert directory_bytes(killed) == directory_bytes(clean)  # every file and the manifest, byte for byte


def test_ctrl_c_with_two_processes_stops_cleanly_and_the_printed_command_resumes(tmp_path, big_run):
    flags, clean, _ = big_run
    out = tmp_path / "out"
    resume = flags + ["--output_dir", str(out), "--processes", "2"]
    process, err, kept = run_and_stop(resume + ["--overwrite"], out, "big", 20, signal.SIGINT)
    # Exit status 130 and one line (no traceback, none from the workers) with the command that resumes:
    # the same, but without --overwrite, which would start over.
    assert process.returncode == 130, err
    command = shlex.join([sys.executable, "-m", "gpt_neo_mtf.cli.create_tfrecords"] + resume)
    assert err.splitlines() == ["interrupted: the complete files in %s are kept; resume with: %s" % (out, command)]
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # no process of the run is left: the workers ended with it
    # Only complete files, each listed in the manifest, which says where to resume.
    manifest = read_manifest(out, "big")
    assert not manifest["complete"] and manifest["resume"]["document"] > 0
    assert sorted(os.listdir(str(out))) == sorted([e["name"] for e in manifest["files"]] + ["big.manifest.json"])
    assert len(manifest["files"]) == kept < len(read_manifest(clean, "big")["files"])
    no_partial_final_file(out, "big")

    resumed = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert directory_bytes(out) == directory_bytes(clean)


def small_corpus(path):
    """40 sample documents cut to 1500 characters, with empty ones and bad lines among them."""
    lines = []
    for i, (text, pile) in enumerate(sample_documents("train")[:40]):
        lines.append(json_line(text[:1500], pile))
        if i % 7 == 3:
            lines += [json_line(""), b"not json\n"]
    return write_lines(path, lines, frames=3)


class Interrupt(KeyboardInterrupt):
    """A Ctrl-C raised at a chosen point of a conversion."""


@pytest.mark.parametrize("mode", ["chunks", "documents"])
@pytest.mark.parametrize("where,after", [("mid_file", 7), ("mid_file", 23), ("renamed_before_manifest", 2),
                                         ("renamed_before_manifest", 5)])
def test_interrupted_run_resumes_to_identical_output(tmp_path, monkeypatch, mode, where, after):
    """Ctrl-C (or a kill) at several points: while a file is written, and between a file's rename
    and the manifest update."""
    source = small_corpus(tmp_path / "small.jsonl.zst")
    args = dict(name="r", mode=mode, chunk_size=32, files_per=3 if mode == "documents" else 10,
                options=TextOptions(skip_bad_lines=True))
    clean = tmp_path / "clean"
    create_tfrecords(source, str(clean), "gpt2", **args)
    reference = read_manifest(clean, "r")
    assert (reference["records"] if where == "mid_file" else len(reference["files"])) > after + 2

    calls = {"n": 0}
    if where == "mid_file":
        original = records_module.RecordWriter.add

        def add(self, tokens):
            calls["n"] += 1
            if calls["n"] == after:
                raise Interrupt
            original(self, tokens)
        monkeypatch.setattr(records_module.RecordWriter, "add", add)
    else:
        original = storage.write_json

        def write_json(path, value):
            calls["n"] += 1
            if calls["n"] == after:
                raise Interrupt
            original(path, value)
        monkeypatch.setattr(storage, "write_json", write_json)
    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        create_tfrecords(source, str(out), "gpt2", **args)
    monkeypatch.undo()
    if os.path.exists(os.path.join(str(out), "r.manifest.json")):  # none before the first file is complete
        assert not read_manifest(out, "r")["complete"]
    manifest = create_tfrecords(source, str(out), "gpt2", **args)
    assert manifest == read_manifest(clean, "r")
    assert directory_bytes(out) == directory_bytes(clean)


def test_interrupted_right_after_the_first_file_resumes(tmp_path, monkeypatch):
    source = small_corpus(tmp_path / "small.jsonl.zst")
    args = dict(name="r", chunk_size=32, files_per=10, options=TextOptions(skip_bad_lines=True))
    clean = tmp_path / "clean"
    create_tfrecords(source, str(clean), "gpt2", **args)
    original = records_module.RecordWriter.finish

    def finish(self, path):  # the first file gets its final name, then the run is interrupted
        original(self, path)
        raise Interrupt
    monkeypatch.setattr(records_module.RecordWriter, "finish", finish)
    out = tmp_path / "out"
    with pytest.raises(Interrupt):
        create_tfrecords(source, str(out), "gpt2", **args)
    monkeypatch.undo()
    assert "r_0_10.tfrecords" in os.listdir(str(out))
    create_tfrecords(source, str(out), "gpt2", **args)
    assert directory_bytes(out) == directory_bytes(clean)


def test_ctrl_c_during_a_rename_and_its_manifest_update_waits_for_both(tmp_path, monkeypatch):
    source = small_corpus(tmp_path / "small.jsonl.zst")
    args = dict(name="r", chunk_size=32, files_per=10, options=TextOptions(skip_bad_lines=True))
    clean = tmp_path / "clean"
    create_tfrecords(source, str(clean), "gpt2", **args)
    original = records_module.RecordWriter.finish

    def finish(self, path):  # a real SIGINT just before the second file is renamed
        if path.endswith("/r_1_10.tfrecords"):
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, path)
    monkeypatch.setattr(records_module.RecordWriter, "finish", finish)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        create_tfrecords(source, str(out), "gpt2", **args)
    monkeypatch.undo()
    # It took effect once the manifest listed the renamed file, and the file being written is gone.
    assert [e["name"] for e in read_manifest(out, "r")["files"]] == ["r_0_10.tfrecords", "r_1_10.tfrecords"]
    assert sorted(os.listdir(str(out))) == ["r.manifest.json", "r_0_10.tfrecords", "r_1_10.tfrecords"]
    create_tfrecords(source, str(out), "gpt2", **args)
    assert directory_bytes(out) == directory_bytes(clean)


def test_rerun_of_a_complete_run_changes_nothing(tmp_path, capsys):
    path = write_docs(tmp_path / "d.jsonl", DOCS)
    out = tmp_path / "out"
    flags = ["--input", path, "--output_dir", out, "--name", "c", "--chunk_size", CHUNK, "--files_per", "2"]
    assert cli(capsys, *flags)[0] == 0
    before = directory_bytes(out)
    times = {p: os.stat(os.path.join(str(out), p)).st_mtime_ns for p in before}
    code, stdout, _ = cli(capsys, *flags + ["--processes", "2"])  # processes does not change the output
    assert code == 0 and "wrote" in stdout
    assert directory_bytes(out) == before
    assert {p: os.stat(os.path.join(str(out), p)).st_mtime_ns for p in before} == times


@pytest.mark.parametrize("change", [["--chunk_size", "8"], ["--files_per", "5"], ["--mode", "documents"],
                                    ["--separator", "11"], ["--skip_bad_lines"], ["--pile_set_name", "ArXiv"]])
def test_rerun_with_other_arguments_is_refused_until_overwrite(tmp_path, capsys, change):
    path = write_docs(tmp_path / "d.jsonl", DOCS)
    out = tmp_path / "out"
    flags = ["--input", path, "--output_dir", out, "--name", "c", "--chunk_size", CHUNK, "--files_per", "2"]
    assert cli(capsys, *flags)[0] == 0
    # Files --overwrite leaves alone: another name's, and names that only look like c's.
    others = {"cd_0_5.tfrecords": b"run cd", "cd.manifest.json": b"{}", "c_0_2.tfrecords.bak": b"a copy",
              "c.txt": b"notes", "c_1.manifest.json": b"{}", "c_1_0.tfrecords.incomplete": b"run c_1"}
    for name, data in others.items():
        (out / name).write_bytes(data)
    before = directory_bytes(out)
    code, _, err = cli(capsys, *flags + change)
    assert code == 2
    line = one_error(err)
    differ = change[0].lstrip("-").replace("pile_set_name", "pile_set_names")
    files = len(read_manifest(out, "c")["files"])
    assert line == ("error: %s was written with other arguments (%s differ) and lists %d complete file(s); pass "
                    "--overwrite to delete c.manifest.json and the c_<index>_<records>.tfrecords files and start over, "
                    "or choose another --output_dir or --name" % (out / "c.manifest.json", differ, files))
    assert directory_bytes(out) == before

    code = cli(capsys, *flags + change + ["--overwrite"])[0]
    clean = tmp_path / "clean"
    assert code == cli(capsys, *flags[:3] + [clean] + flags[4:] + change)[0]  # 2 when ArXiv filters every document
    after = directory_bytes(out)
    assert {name: after.pop(name) for name in others} == others
    assert after == directory_bytes(clean)


def test_records_without_a_manifest_are_refused(tmp_path, capsys):
    path = write_docs(tmp_path / "d.jsonl", DOCS)
    out = tmp_path / "out"
    out.mkdir()
    (out / "c_0_5.tfrecords").write_bytes(b"from another run")
    flags = ["--input", path, "--output_dir", out, "--name", "c", "--chunk_size", CHUNK]
    code, _, err = cli(capsys, *flags)
    assert code == 2
    assert one_error(err) == (
        "error: %s already holds c_0_5.tfrecords but no c.manifest.json: refusing to mix runs; pass --overwrite to "
        "delete this --name's files and start over, or choose another --output_dir or --name" % out)
    assert os.listdir(str(out)) == ["c_0_5.tfrecords"]
    # Another --name in the same directory is fine.
    assert cli(capsys, "--input", path, "--output_dir", out, "--name", "d", "--chunk_size", CHUNK)[0] == 0
    with pytest.raises(RecordsError):
        create_tfrecords(path, str(out), "gpt2", name="c", chunk_size=CHUNK)
    # A file of the name c_1 matches c's dataset glob: --overwrite does not delete it, and is refused.
    (out / "c_1_0_5.tfrecords").write_bytes(b"the run named c_1")
    before = directory_bytes(out)
    code, _, err = cli(capsys, *flags + ["--overwrite"])
    assert code == 2
    assert "holds c_1_0_5.tfrecords, which the dataset glob c_*.tfrecords would also match" in one_error(err)
    assert directory_bytes(out) == before
    # Without it, --overwrite deletes c's file and starts over; d's files stay.
    (out / "c_1_0_5.tfrecords").unlink()
    d_files = {p: data for p, data in before.items() if p.startswith("d")}
    assert cli(capsys, *flags + ["--overwrite"])[0] == 0
    listed = [e["name"] for e in read_manifest(out, "c")["files"]]
    assert sorted(os.listdir(str(out))) == sorted(listed + ["c.manifest.json"] + list(d_files))
    assert "c_0_5.tfrecords" not in listed
    assert {p: data for p, data in directory_bytes(out).items() if p.startswith("d")} == d_files


@pytest.mark.parametrize("change", [["--skip_bad_lines"], ["--skip_bad_lines", "--chunk_size", "8"]])
def test_a_run_that_completed_no_file_does_not_lock_the_output(tmp_path, capsys, change):
    """A bad line before the first file is complete: the rerun the error suggests, with other arguments
    too, starts over, deleting the manifest and the *.incomplete files a kill -9 leaves, and nothing else."""
    lines = [json_line("good line number %d" % i) for i in range(20)] + [b"oops\n", json_line("after it")]
    path = write_lines(tmp_path / "b.jsonl", lines)
    out = tmp_path / "out"
    flags = ["--input", path, "--output_dir", out, "--name", "b", "--chunk_size", "4"]
    code, _, err = cli(capsys, *flags)
    assert code == 2 and "line 21" in one_error(err) and "--skip_bad_lines" in one_error(err)
    assert read_manifest(out, "b")["files"] == []
    assert sorted(os.listdir(str(out))) == ["b.manifest.json"]  # the file being written was deleted
    leftovers = {"b_0.tfrecords.incomplete": b"cut short", "b.manifest.json.incomplete": b"{"}
    others = {"b_1_0.tfrecords.incomplete": b"run b_1", "b_1.manifest.json": b"{}", "b.txt": b"notes"}
    for name, data in dict(leftovers, **others).items():
        (out / name).write_bytes(data)

    code, stdout, err = cli(capsys, *flags + change)
    assert code == 0, err
    assert "1 bad lines" in stdout
    clean = tmp_path / "clean"
    assert cli(capsys, *flags[:3] + [clean] + flags[4:] + change)[0] == 0
    after = directory_bytes(out)
    assert {name: after.pop(name) for name in others} == others
    assert after == directory_bytes(clean)


def test_bad_line_after_complete_files_resumes_with_skip_bad_lines(tmp_path, capsys):
    """No line before the complete files was bad (the run would have stopped there), so --skip_bad_lines
    does not change them: the rerun keeps them and ends with the output of a run that had it from the start."""
    lines = ([json_line("good line number %d" % i) for i in range(1500)] + [b"oops\n"]
             + [json_line("line after the bad one, %d" % i) for i in range(300)])
    path = write_lines(tmp_path / "b.jsonl", lines)
    out = tmp_path / "out"
    flags = ["--input", path, "--output_dir", out, "--name", "b", "--chunk_size", "4", "--files_per", "50"]
    code, _, err = cli(capsys, *flags)
    assert code == 2 and "line 1501" in one_error(err)
    assert not [p for p in os.listdir(str(out)) if p.endswith(".incomplete")]  # the file being written is deleted
    kept = {e["name"]: os.stat(os.path.join(str(out), e["name"])).st_mtime_ns
            for e in read_manifest(out, "b")["files"]}
    assert len(kept) >= 5
    # Another chunk size would change the complete files: refused, saying how to resume or start over.
    code, _, err = cli(capsys, *flags + ["--skip_bad_lines", "--chunk_size", "8"])
    assert code == 2
    line = one_error(err)
    assert "(chunk_size differ) and lists %d complete file(s); rerun with those arguments to resume, pass " \
           "--overwrite" % len(kept) in line

    code, stdout, err = cli(capsys, *flags + ["--skip_bad_lines"])
    assert code == 0, err
    assert "1 bad lines" in stdout
    assert {p: os.stat(os.path.join(str(out), p)).st_mtime_ns for p in kept} == kept  # not written again
    clean = tmp_path / "clean"
    assert cli(capsys, *flags[:3] + [clean] + flags[4:] + ["--skip_bad_lines"])[0] == 0
    assert directory_bytes(out) == directory_bytes(clean)


def test_skip_bad_lines_is_dropped_on_resume_only_while_no_line_was_skipped(tmp_path, monkeypatch, capsys):
    lines = ([json_line("good line number %d" % i) for i in range(600)] + [b"oops\n"]
             + [json_line("line after the bad one, %d" % i) for i in range(600)])
    path = write_lines(tmp_path / "b.jsonl", lines)
    flags = ["--input", path, "--name", "b", "--chunk_size", "4", "--files_per", "50"]

    def interrupted_run(out, records):
        """A --skip_bad_lines run interrupted as its `records`th record is written."""
        calls = {"n": 0}
        original = records_module.RecordWriter.add

        def add(self, tokens):
            calls["n"] += 1
            if calls["n"] == records:
                raise Interrupt
            original(self, tokens)
        monkeypatch.setattr(records_module.RecordWriter, "add", add)
        assert main(flags + ["--output_dir", str(out), "--skip_bad_lines", "--quiet"]) == 130
        monkeypatch.undo()
        return read_manifest(out, "b")["resume"]

    # Interrupted after the bad line was skipped: without --skip_bad_lines the complete files would differ.
    late = tmp_path / "late"
    assert interrupted_run(late, 1200)["skipped"]["bad_lines"] == 1
    before = directory_bytes(late)
    code, _, err = cli(capsys, *flags + ["--output_dir", late])
    assert code == 2 and "(skip_bad_lines differ)" in one_error(err)
    assert directory_bytes(late) == before

    # Interrupted before it: the rerun without --skip_bad_lines resumes and stops at the bad line as a run
    # without it does; one with it again resumes to the output of an uninterrupted run.
    early = tmp_path / "early"
    assert interrupted_run(early, 200)["skipped"]["bad_lines"] == 0
    code, _, err = cli(capsys, *flags + ["--output_dir", early])
    assert code == 2 and "line 601" in one_error(err)
    assert cli(capsys, *flags + ["--output_dir", early, "--skip_bad_lines"])[0] == 0
    clean = tmp_path / "clean"
    assert cli(capsys, *flags + ["--output_dir", clean, "--skip_bad_lines"])[0] == 0
    assert directory_bytes(early) == directory_bytes(clean)


@pytest.mark.parametrize("broken", ["a", "b"])
def test_rerun_after_fixing_a_corrupt_input(tmp_path, capsys, broken):
    """A .jsonl.zst that is really gzip, renamed to .jsonl.gz: when it is the second input, the files
    complete from the first one are kept (the inputs up to there are the same); when it is the first,
    no file was complete and the rerun starts over. Both end with the output of the corrected inputs."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("a", "b"):
        lines = [json_line("document %d of file %s" % (i, name)) for i in range(1200)]
        write_lines(inputs / (name + (".jsonl.gz" if name == broken else ".jsonl.zst")), lines)
    os.rename(str(inputs / (broken + ".jsonl.gz")), str(inputs / (broken + ".jsonl.zst")))
    out = tmp_path / "out"
    flags = ["--input", inputs, "--output_dir", out, "--name", "c", "--chunk_size", "16", "--files_per", "20"]
    code, _, err = cli(capsys, *flags)
    assert code == 2 and "%s.jsonl.zst is corrupt" % broken in one_error(err)
    stopped = read_manifest(out, "c")
    if broken == "a":
        assert stopped["files"] == []
    else:
        assert stopped["files"] and stopped["resume"]["file"] == 0

    os.rename(str(inputs / (broken + ".jsonl.zst")), str(inputs / (broken + ".jsonl.gz")))
    code, _, err = cli(capsys, *flags)
    assert code == 0, err
    clean = tmp_path / "clean"
    assert cli(capsys, *flags[:3] + [clean] + flags[4:])[0] == 0
    assert directory_bytes(out) == directory_bytes(clean)


# ---------------------------------------------------------------------------------------------
# The dataset config, used by the trainer


def test_write_dataset_config_for_train_and_eval_and_train_with_it(tmp_path, monkeypatch, capsys):
    from gpt_neo_mtf.inputs.sequential import dataset, training_files
    from gpt_neo_mtf.trainer.config import load_config, load_dataset_config

    monkeypatch.chdir(str(tmp_path))  # relative output dirs become absolute globs
    configs = tmp_path / "dataset_configs"
    configs.mkdir()
    config_path = configs / "mine.json"
    common = ["--name", "mine", "--chunk_size", "32", "--files_per", "40", "--write_dataset_config", config_path]
    assert cli(capsys, "--input", os.path.join(SAMPLE, "train.jsonl.zst"), "--output_dir", "records/train",
               *common)[0] == 0
    written = json.loads(config_path.read_text())
    train_glob = os.path.join(os.getcwd(), "records", "train", "mine_*.tfrecords")
    assert written == {"path": train_glob, "n_vocab": 50257, "tokenizer_path": "gpt2",
                       "tokenizer_is_pretrained": True, "eos_id": EOS, "padding_id": 50257}
    assert cli(capsys, "--input", os.path.join(SAMPLE, "val.jsonl.zst"), "--output_dir", "records/val",
               "--dataset_split", "eval", *common)[0] == 0
    written = json.loads(config_path.read_text())
    eval_glob = os.path.join(os.getcwd(), "records", "val", "mine_*.tfrecords")
    assert written == {"path": train_glob, "eval_path": eval_glob, "n_vocab": 50257, "tokenizer_path": "gpt2",
                       "tokenizer_is_pretrained": True, "eos_id": EOS, "padding_id": 50257}
    assert [p for p in os.listdir(str(configs))] == ["mine.json"]

    ds = load_dataset_config("mine", [str(configs)])
    assert (ds.path, ds.eval_path, ds.n_vocab, ds.eos_id, ds.padding_id) == (train_glob, eval_glob, 50257, EOS,
                                                                             50257)
    model = dict(TINY, model_path=str(tmp_path / "model"), datasets=[["mine", None, None, None]])
    (tmp_path / "tiny.json").write_text(json.dumps(model))
    config = load_config(str(tmp_path / "tiny.json"))
    manifest = read_manifest(tmp_path / "records" / "train", "mine")
    train_files = training_files(config.data)
    assert sorted(train_files) == sorted(str(tmp_path / "records" / "train" / e["name"]) for e in manifest["files"])
    eval_files = training_files(config.data, eval_files=True)
    assert [os.path.basename(p) for p in eval_files] == [
        e["name"] for e in read_manifest(tmp_path / "records" / "val", "mine")["files"]]
    # The trainer's reader takes the records: inputs and labels are a record shifted by one.
    with tf.Graph().as_default():
        batch = tf.data.make_one_shot_iterator(dataset(train_files, 32, 50257, 4)).get_next()
        with tf.Session() as session:
            inputs, labels = session.run(batch)
    first = read_records(train_files[0])[:4]
    assert inputs.tolist() == [r[:32] for r in first] and labels.tolist() == [r[1:] for r in first]

    # A dataset config for another tokenizer is not overwritten.
    (configs / "other.json").write_text(json.dumps({"n_vocab": 32000, "eos_id": 2}))
    code, _, err = cli(capsys, "--input", os.path.join(SAMPLE, "val.jsonl.zst"), "--output_dir",
                       "records/val", "--name", "mine", "--chunk_size", "32", "--files_per", "40",
                       "--write_dataset_config", configs / "other.json")
    assert code == 2
    assert "other.json exists with other" in one_error(err)
    assert json.loads((configs / "other.json").read_text()) == {"n_vocab": 32000, "eos_id": 2}


def test_dataset_config_in_a_missing_directory_is_one_error(tmp_path, capsys):
    target = tmp_path / "no_such_dir" / "mine.json"
    code, _, err = cli(capsys, "--input", os.path.join(SAMPLE, "val.jsonl.zst"), "--output_dir",
                       tmp_path / "out", "--chunk_size", "32", "--write_dataset_config", target)
    assert code == 2
    assert str(target) in one_error(err)
    assert not (tmp_path / "no_such_dir").exists()


# ---------------------------------------------------------------------------------------------
# The shipped sample corpus


def test_sample_corpus_converts_and_decodes_back(sample_records, gpt2_tokenizer):
    n_ctx = 32
    root = sample_records(n_ctx)
    docs = [text for text, _ in sample_documents("train")]
    assert len(docs) == 121
    manifest, records = check_directory(os.path.join(root, "train"), "sample")
    for entry in manifest["files"]:
        assert int(re.search(r"_(\d+)\.tfrecords$", entry["name"]).group(1)) == entry["records"]
    # Every document is kept: the records are the whole token stream but for its last partial chunk.
    check_chunks(manifest, records, expected_stream(gpt2_tokenizer, docs), n_ctx, 300)

    corpus = "\n".join(docs)
    whole_docs = set(docs)
    for record in records:
        pieces, current = [], []
        for t in record:
            if t == EOS:
                pieces.append((current, True))
                current = []
            else:
                current.append(t)
        pieces.append((current, False))
        for i, (ids, ends_at_eos) in enumerate(pieces):
            text = gpt2_tokenizer.decode(ids)
            # A record boundary may split a multi-byte character: trim the replacement characters.
            assert text.strip("\ufffd") in corpus
            if i > 0 and ends_at_eos:  # a whole document between two separators
                assert text in whole_docs
    # The val split converts too.
    val_manifest, val = check_directory(os.path.join(root, "val"), "sample")
    check_chunks(val_manifest, val, expected_stream(gpt2_tokenizer, [t for t, _ in sample_documents("val")]),
                 n_ctx, 300)

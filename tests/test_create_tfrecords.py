"""The TFRecords converter on real files: documents -> token stream -> records of chunk_size + 1 tokens."""
import io
import json
import os
import re

import pytest
import zstandard

from conftest import SAMPLE
from meshtf import tf
from tfrecords_tools.create_tfrecords import create_tfrecords, main

EOS = 50256
CHUNK = 16

ZST_DOCS = [
    "Hello world.",  # shorter than a chunk
    "The quick brown fox jumps over the lazy dog. " * 6,  # several chunks long
    "Short one.",
    ["First paragraph of a list document.", "Second paragraph."],  # joined by a blank line
    "Ünïcödé text \u2014 with \u201cquotes\u201d and an emoji \U0001F642 spanning several bytes.",
    "",  # an empty document still contributes its separator
]
TXT = "A plain text file.\nIt has two lines and is read as one document.\n"


def text_of(doc):
    return "\n\n".join(doc) if isinstance(doc, list) else doc


def write_zst(path, docs, frames=1):
    lines = [json.dumps({"meta": {"i": i}, "text": doc}) + "\n" for i, doc in enumerate(docs)]
    data = b""
    step = max(1, -(-len(lines) // frames))
    for start in range(0, len(lines), step):  # optionally several concatenated zstd frames
        data += zstandard.ZstdCompressor().compress("".join(lines[start:start + step]).encode("utf-8"))
    with open(str(path), "wb") as f:
        f.write(data)
    return str(path)


def read_records(path):
    return [list(tf.train.Example.FromString(r).features.feature["text"].int64_list.value)
            for r in tf.io.tf_record_iterator(path)]


def expected_stream(tokenizer, texts, separator=EOS):
    stream = []
    for text in texts:
        stream += tokenizer.encode(text).ids + [separator]
    return stream


def check_output(files, output_dir, name, stream, chunk, files_per):
    """Records are the full chunk + 1 pieces of `stream` (only the last partial one dropped), in
    files named <name>_<index>_<count>.tfrecords holding files_per records (the last one fewer)."""
    length = chunk + 1
    n = len(stream) // length
    assert n >= 1
    counts = [files_per] * (n // files_per) + ([n % files_per] if n % files_per else [])
    expected_names = ["%s_%d_%d.tfrecords" % (name, i, c) for i, c in enumerate(counts)]
    assert [os.path.basename(f) for f in files] == expected_names
    assert sorted(os.listdir(output_dir)) == sorted(expected_names)  # nothing else, no *.incomplete
    records = []
    for path, count in zip(files, counts):
        in_file = read_records(path)
        assert len(in_file) == count
        records += in_file
    assert all(len(r) == length for r in records)
    assert [t for r in records for t in r] == stream[:n * length]
    assert len(stream) - n * length < length  # only the final partial chunk is dropped
    return records


# ---------------------------------------------------------------------------------------------
# Round trips


def test_tokenizer_is_gpt2(gpt2_tokenizer):
    assert gpt2_tokenizer.encode("Hello world").ids == [15496, 995]
    assert gpt2_tokenizer.token_to_id("<|endoftext|>") == EOS


def test_round_trip_of_jsonl_zst_and_txt_keeps_short_documents(tmp_path, gpt2_tokenizer):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "1_notes.txt").write_text(TXT, encoding="utf-8")
    write_zst(inputs / "2_docs.jsonl.zst", ZST_DOCS)
    (inputs / "3_readme.md").write_text("not an input")
    (inputs / "4_other.json").write_text(json.dumps({"text": "not an input either"}))
    out = str(tmp_path / "out")
    files = create_tfrecords(str(inputs), out, gpt2_tokenizer, name="rt", chunk_size=CHUNK, files_per=3)
    # Natural file order: the .txt (1_) before the .jsonl.zst (2_).
    stream = expected_stream(gpt2_tokenizer, [TXT] + [text_of(d) for d in ZST_DOCS])
    records = check_output(files, out, "rt", stream, CHUNK, files_per=3)
    assert len(records) >= 7 and len(records) % 3  # several files, the last one partial
    # The short documents are in the records (the original dropped them), each followed by EOS.
    flat = [t for r in records for t in r]
    for short in ("Hello world.", "Short one."):
        ids = gpt2_tokenizer.encode(short).ids + [EOS]
        assert any(flat[i:i + len(ids)] == ids for i in range(len(flat))), short
    assert flat.count(EOS) >= 5


@pytest.mark.parametrize("files_per", [1, 2, 5, 1000])
def test_files_per_is_respected(tmp_path, gpt2_tokenizer, files_per):
    path = write_zst(tmp_path / "docs.jsonl.zst", ZST_DOCS)
    out = str(tmp_path / "out")
    files = create_tfrecords(path, out, gpt2_tokenizer, name="fp", chunk_size=CHUNK, files_per=files_per)
    stream = expected_stream(gpt2_tokenizer, [text_of(d) for d in ZST_DOCS])
    check_output(files, out, "fp", stream, CHUNK, files_per)


def test_exact_multiple_of_files_per_leaves_no_empty_file(tmp_path, gpt2_tokenizer):
    path = write_zst(tmp_path / "docs.jsonl.zst", ZST_DOCS)
    stream = expected_stream(gpt2_tokenizer, [text_of(d) for d in ZST_DOCS])
    n = len(stream) // (CHUNK + 1)
    out = str(tmp_path / "out")
    files = create_tfrecords(path, out, gpt2_tokenizer, name="ex", chunk_size=CHUNK, files_per=n)
    assert [os.path.basename(f) for f in files] == ["ex_0_%d.tfrecords" % n]
    check_output(files, out, "ex", stream, CHUNK, n)


def test_glob_input_multi_frame_zst_and_custom_separator(tmp_path, gpt2_tokenizer):
    docs_a = ["alpha " * 20, "beta"]
    docs_b = ["gamma delta", "epsilon " * 9, "zeta"]
    write_zst(tmp_path / "part_10.jsonl.zst", docs_b, frames=3)
    write_zst(tmp_path / "part_9.jsonl.zst", docs_a, frames=2)
    out = str(tmp_path / "out")
    files = create_tfrecords(str(tmp_path / "part_*.jsonl.zst"), out, gpt2_tokenizer, name="g", chunk_size=8,
                             files_per=4, separator=11)
    # part_9 before part_10 (natural order); every frame of a file is read.
    stream = expected_stream(gpt2_tokenizer, docs_a + docs_b, separator=11)
    records = check_output(files, out, "g", stream, 8, 4)
    assert EOS not in [t for r in records for t in r]


def test_directory_input_picks_up_zst_and_txt_only(tmp_path, gpt2_tokenizer):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_zst(inputs / "b_2.jsonl.zst", ["second file " * 5])
    write_zst(inputs / "b_10.jsonl.zst", ["third file " * 5])
    (inputs / "a.txt").write_text("first file " * 5)
    (inputs / "c.json").write_text("{}")
    (inputs / "d.zst").write_bytes(zstandard.ZstdCompressor().compress(b"ignored"))
    out = str(tmp_path / "out")
    files = create_tfrecords(str(inputs), out, gpt2_tokenizer, name="d", chunk_size=4, files_per=100)
    stream = expected_stream(gpt2_tokenizer, ["first file " * 5, "second file " * 5, "third file " * 5])
    check_output(files, out, "d", stream, 4, 100)


def test_directory_input_picks_up_jsonl_zst_jsonl_and_txt(tmp_path, gpt2_tokenizer):
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_zst(inputs / "1_docs.jsonl.zst", ZST_DOCS)
    (inputs / "2_plain.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ("plain one", "plain two")))
    (inputs / "3_notes.txt").write_text(TXT)
    out = str(tmp_path / "out")
    files = create_tfrecords(str(inputs), out, gpt2_tokenizer, name="all", chunk_size=CHUNK, files_per=4)
    stream = expected_stream(gpt2_tokenizer, [text_of(d) for d in ZST_DOCS] + ["plain one", "plain two", TXT])
    check_output(files, out, "all", stream, CHUNK, 4)


# ---------------------------------------------------------------------------------------------
# The command line


def test_cli_writes_records_and_reports_them(tmp_path, gpt2_tokenizer, capsys):
    path = write_zst(tmp_path / "docs.jsonl.zst", ZST_DOCS)
    out = str(tmp_path / "out")
    assert main(["--input_dir", path, "--output_dir", out, "--name", "cli", "--chunk_size", str(CHUNK),
                 "--files_per", "3", "--encoder_path", "gpt2"]) == 0
    files = sorted(tf.io.gfile.glob(os.path.join(out, "*.tfrecords")),
                   key=lambda p: int(os.path.basename(p).split("_")[1]))
    stream = expected_stream(gpt2_tokenizer, [text_of(d) for d in ZST_DOCS])
    check_output(files, out, "cli", stream, CHUNK, 3)
    assert "wrote %d file(s) to %s" % (len(files), out) in capsys.readouterr().out


def test_cli_input_matching_nothing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for missing in (str(tmp_path / "nothing_*.jsonl.zst"), str(tmp_path / "empty")):
        assert main(["--input_dir", missing, "--output_dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "no input files at %s" % missing in lines[0]
    assert not os.path.exists(str(tmp_path / "out")) or not os.listdir(str(tmp_path / "out"))


@pytest.mark.parametrize("bad_line", ['{"meta": {"title": "no text"}}', "this is not JSON", "[1, 2]", "null"])
def test_cli_json_line_without_text_names_file_and_line(tmp_path, capsys, bad_line):
    path = str(tmp_path / "bad.jsonl.zst")
    lines = [json.dumps({"text": "a good line"}), "", bad_line, json.dumps({"text": "never reached"})]
    with open(path, "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    out = str(tmp_path / "out")
    assert main(["--input_dir", path, "--output_dir", out, "--chunk_size", "4"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("error:")]
    assert path in line and "line 3" in line and '"text"' in line
    assert not tf.io.gfile.glob(os.path.join(out, "*"))  # no record was complete: nothing written


def test_cli_text_that_is_not_a_string_names_file_and_line(tmp_path, capsys):
    path = str(tmp_path / "bad.jsonl.zst")
    with open(path, "wb") as f:
        f.write(zstandard.ZstdCompressor().compress(b'{"text": "fine"}\n{"text": 5}\n'))
    assert main(["--input_dir", path, "--output_dir", str(tmp_path / "out"), "--chunk_size", "4"]) == 2
    [line] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert path in line and "line 2" in line


def test_cli_rejects_chunk_size_below_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--input_dir", str(tmp_path), "--chunk_size", "0"])
    assert exit_info.value.code == 2
    assert "--chunk_size and --files_per must be at least 1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The shipped sample corpus


def sample_documents(split):
    with open(os.path.join(SAMPLE, split + ".jsonl.zst"), "rb") as f:
        text = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(f), encoding="utf-8").read()
    return [json.loads(line)["text"] for line in text.splitlines() if line.strip()]


def test_sample_corpus_converts_and_decodes_back(sample_records, gpt2_tokenizer):
    n_ctx = 32
    root = sample_records(n_ctx)
    docs = sample_documents("train")
    assert len(docs) == 121
    files = sorted(tf.io.gfile.glob(os.path.join(root, "train", "*.tfrecords")),
                   key=lambda p: int(os.path.basename(p).split("_")[1]))
    stream = expected_stream(gpt2_tokenizer, docs)
    # Every document is kept: the records are the whole token stream but for its last partial chunk.
    records = []
    for path in files:
        name_count = int(re.search(r"_(\d+)\.tfrecords$", path).group(1))
        in_file = read_records(path)
        assert len(in_file) == name_count
        records += in_file
    assert all(len(r) == n_ctx + 1 for r in records)
    assert len(records) == len(stream) // (n_ctx + 1)
    assert [t for r in records for t in r] == stream[:len(records) * (n_ctx + 1)]

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
            trimmed = text.strip("\ufffd")
            assert trimmed in corpus
            if i > 0 and ends_at_eos:  # a whole document between two separators
                assert text in whole_docs
    # The val split converts too.
    val = sum(len(read_records(p)) for p in tf.io.gfile.glob(os.path.join(root, "val", "*.tfrecords")))
    assert val == len(expected_stream(gpt2_tokenizer, sample_documents("val"))) // (n_ctx + 1)

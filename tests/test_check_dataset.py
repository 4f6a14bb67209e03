"""check_dataset on real TFRecords: clean data passes; each kind of damage is named with where it is."""
import json
import os
import shutil
import struct

import pytest
from conftest import run_main

from gpt_neo_mtf.cli import check_dataset
from gpt_neo_mtf.tfrecords_tools.create_tfrecords import create_tfrecords
from gpt_neo_mtf.tfrecords_tools.records import RecordWriter

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "sample")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("converted"))
    create_tfrecords(os.path.join(SAMPLE, "val.jsonl.zst"), out, "gpt2", name="val", chunk_size=32, files_per=40)
    return out


@pytest.fixture
def copy(converted, tmp_path):
    target = str(tmp_path / "data")
    shutil.copytree(converted, target)
    return target


def run(argv, capsys):
    code = check_dataset.main(argv + ["--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_clean_conversion_passes_with_totals_and_a_decoded_sample(copy, capsys):
    code, out, err = run([copy + "/*.tfrecords", "--n_vocab", "50257", "--n_ctx", "32", "--tokenizer", "gpt2"], capsys)
    assert code == 0 and err == ""
    assert "sha256 ok" in out and "first record, decoded:" in out
    manifest = json.load(open(os.path.join(copy, "val.manifest.json")))
    assert "total: %d files, %d records, %d tokens" % (
        len(manifest["files"]), manifest["records"], manifest["tokens"]) in out


def test_two_processes_report_what_one_does_with_a_progress_bar_of_the_bytes(copy, capsys):
    argv = [copy + "/*.tfrecords", "--n_vocab", "50257", "--n_ctx", "32"]
    one = run(argv, capsys)
    code = check_dataset.main(argv + ["--processes", "2"])
    captured = capsys.readouterr()
    assert (code, captured.out) == one[:2] and one[0] == 0
    total = sum(os.path.getsize(os.path.join(copy, name)) for name in os.listdir(copy) if name.endswith(".tfrecords"))
    bar = captured.err.replace("\r", "\n").splitlines()[-1]
    assert bar.startswith("100%") and "{0:.1f}k/{0:.1f}k".format(total / 1024) in bar, captured.err


def test_truncated_file_is_named_with_the_offset(copy, capsys):
    path = os.path.join(copy, "val_0_40.tfrecords")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 10)
    code, out, err = run([copy + "/*.tfrecords"], capsys)
    assert code == 2 and err == "error: 2 problem(s) found\n"
    assert "problem: %s: truncated record at byte " % path in out
    assert "differ from the manifest" in out


def test_flipped_byte_is_a_crc_mismatch_at_its_record(copy, capsys):
    path = os.path.join(copy, "val_1_40.tfrecords")
    data = bytearray(open(path, "rb").read())
    offset = 0
    for _ in range(5):  # skip records 0..4: 8-byte length, 4-byte crc, data, 4-byte crc
        offset += 16 + struct.unpack("<Q", bytes(data[offset:offset + 8]))[0]
    data[offset + 20] ^= 0xFF  # inside record 5's data
    open(path, "wb").write(bytes(data))
    code, out, _ = run([path], capsys)
    assert code == 2
    assert "corrupt record data at byte %d (CRC mismatch)" % offset in out


def test_ids_outside_the_vocab_short_records_and_wrong_name_counts(tmp_path, capsys):
    writer = RecordWriter(str(tmp_path / "tmp"))
    writer.add([1, 2, 3])
    writer.add([5, 70000, 4, 4, 4])
    writer.finish(str(tmp_path / "bad_0_3.tfrecords"))
    code, out, _ = run([str(tmp_path / "bad_0_3.tfrecords"), "--n_vocab", "50257", "--n_ctx", "4"], capsys)
    assert code == 2
    assert "token id 70000 >= n_vocab 50257" in out
    assert "a record has 3 tokens, fewer than n_ctx + 1 = 5" in out
    assert "the name says 3 records but the file holds 2" in out


def test_no_match_is_a_one_line_error(tmp_path, capsys):
    code, out, err = run([str(tmp_path / "*.tfrecords")], capsys)
    assert code == 2 and err == "error: %s/*.tfrecords matches no files\n" % tmp_path


def test_main_check_dataset_uses_the_configs_data(make_config, sample_records, capsys):
    assert run_main("--model", make_config("checked"), "--check_dataset") == 0
    out = capsys.readouterr().out
    assert "total:" in out and "first record, decoded:" in out
    # A config with n_ctx 64 needs records of 65 tokens; these hold 33.
    too_long = make_config("too_long", n_ctx=64, records_dir=sample_records(32))
    assert run_main("--model", too_long, "--check_dataset") == 2
    captured = capsys.readouterr()
    assert "fewer than n_ctx + 1 = 65" in captured.out
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1


def test_documents_need_n_ctx_plus_one_tokens_per_join_of_stitch_not_per_record(make_config, tmp_path, capsys):
    """generic_text's documents modes join `stitch` documents per example: short records are fine as
    long as the `stitch` shortest hold n_ctx + 1 tokens. Other modes still need them in every record."""
    for split in ("train", "val"):
        os.makedirs(str(tmp_path / "docs" / split))
        writer = RecordWriter(str(tmp_path / "docs" / split / "tmp"))
        for length in (20, 7, 5, 6):
            writer.add(list(range(1, length + 1)))
        writer.finish(str(tmp_path / "docs" / split / "docs_0_4.tfrecords"))
    files = str(tmp_path / "docs" / "train" / "*.tfrecords")
    code, out, _ = run([files, "--n_ctx", "16"], capsys)
    assert code == 2 and "a record has 5 tokens, fewer than n_ctx + 1 = 17" in out
    assert run([files, "--n_ctx", "16", "--stitch", "3"], capsys)[0] == 0  # 5 + 6 + 7 = 18 tokens
    code, out, _ = run([files, "--n_ctx", "16", "--stitch", "2"], capsys)
    assert code == 2
    assert ("problem: %s: its 2 shortest documents hold 11 tokens together (5 + 6), fewer than n_ctx + 1 = 17"
            % files) in out
    assert "a record has" not in out

    for mode, stitch, code in (("documents_random", 3, 0), ("documents_fixed", 2, 2), ("chunks", None, 2)):
        config = make_config(mode, n_ctx=16, records_dir=str(tmp_path / "docs"), input_fn="generic_text",
                             datasets=[["sample", stitch, mode, None]])
        assert run_main("--model", config, "--check_dataset") == code
        out = capsys.readouterr().out
        assert ("2 shortest documents" in out) == (mode == "documents_fixed")
    sequential = make_config("sequential", n_ctx=16, records_dir=str(tmp_path / "docs"))
    assert run_main("--model", sequential, "--check_dataset") == 2
    assert "a record has 5 tokens, fewer than n_ctx + 1 = 17" in capsys.readouterr().out

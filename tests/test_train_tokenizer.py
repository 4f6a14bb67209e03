"""tfrecords_tools.train_tokenizer: byte-level BPE trained on the shipped sample corpus, through
the real CLI `main(argv)`, loaded back with inputs.tokenizer.load_tokenizer."""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import pytest
from tokenizers.pre_tokenizers import ByteLevel

from conftest import REPO, SAMPLE
from gpt_neo_mtf.inputs.tokenizer import END_OF_TEXT, PADDING, load_tokenizer
from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.cli import train_tokenizer as tt_command
from gpt_neo_mtf.tfrecords_tools import train_tokenizer as tt

TRAIN = os.path.join(SAMPLE, "train.jsonl.zst")
VOCAB = 1000


def train(output_dir, *flags, inputs=(TRAIN,), vocab_size=VOCAB):
    return tt_command.main(["--input", *inputs, "--output_dir", str(output_dir), "--vocab_size", str(vocab_size), *flags])


def read(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def error_lines(capsys):
    err = capsys.readouterr().err
    return [line for line in err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(tokenizer file, stdout) of one run on the whole sample corpus."""
    out = tmp_path_factory.mktemp("tokenizer")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert train(out) == 0
    return os.path.join(str(out), tt.TOKENIZER_FILE), stdout.getvalue()


def test_special_ids_vocab_size_and_pipeline(trained):
    path, _ = trained
    tokenizer = load_tokenizer(path)
    assert tokenizer.token_to_id(END_OF_TEXT) == 0
    assert tokenizer.token_to_id(PADDING) == 1
    assert tokenizer.get_vocab_size() == VOCAB
    spec = json.loads(read(path))
    assert spec["normalizer"]["type"] == "NFKC"
    assert spec["pre_tokenizer"] == {**spec["pre_tokenizer"], "type": "ByteLevel", "add_prefix_space": True}
    assert spec["decoder"]["type"] == "ByteLevel"
    assert spec["post_processor"] == {**spec["post_processor"], "type": "ByteLevel", "trim_offsets": True}
    assert [(t["id"], t["content"], t["special"]) for t in spec["added_tokens"]] == [
        (0, END_OF_TEXT, True), (1, PADDING, True)]
    vocab = tokenizer.get_vocab()
    # All 256 byte symbols are in the vocabulary, seen in the corpus or not; ids 2..257.
    assert sorted(vocab[symbol] for symbol in ByteLevel.alphabet()) == list(range(2, 258))
    assert "Ġthe" in vocab and "Ġreturn" in vocab  # merges learned from the Python docs


@pytest.mark.parametrize("text", [
    "def f(x):\n    return x + 1\n",
    " The quick brown fox, the lazy dog.",
    "a  b\n\n\tc ~!@#$%^&*()_+{}|:\"<>?`-=[]\\;',./",
    "bytes the corpus never had: \x00\x7f \u00e9\u65e5\u672c \U0001f642",
])
def test_round_trip(trained, text):
    tokenizer = load_tokenizer(trained[0])
    ids = tokenizer.encode(text).ids
    assert ids and max(ids) < VOCAB and 0 not in ids and 1 not in ids
    # The pre-tokenizer adds a space before text that does not start with one; decoding keeps it.
    expected = text if text.startswith(" ") else " " + text
    assert tokenizer.decode(ids) == expected


def test_merges_compress_text(trained):
    tokenizer = load_tokenizer(trained[0])
    text = "Return the value of the attribute of the object."
    assert len(tokenizer.encode(text).ids) < len(text.encode()) / 2


def test_prints_dataset_config_entries(trained):
    path, stdout = trained
    assert "trained on 121 documents" in stdout
    entries = json.loads(stdout[stdout.index("{"):])
    assert entries == {"n_vocab": VOCAB, "tokenizer_path": path, "tokenizer_is_pretrained": False,
                       "eos_id": 0, "padding_id": 1}


def test_deterministic(trained, tmp_path):
    assert train(tmp_path) == 0
    assert read(tmp_path / tt.TOKENIZER_FILE) == read(trained[0])


def test_refuses_to_overwrite_and_overwrite_replaces_only_the_file(trained, tmp_path, capsys):
    path = tmp_path / tt.TOKENIZER_FILE
    path.write_bytes(b"an earlier tokenizer")
    (tmp_path / "notes.txt").write_text("keep me")
    capsys.readouterr()
    assert train(tmp_path) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--overwrite" in lines[0]
    assert path.read_bytes() == b"an earlier tokenizer"

    assert train(tmp_path, "--overwrite") == 0
    assert path.read_bytes() == read(trained[0])
    assert sorted(os.listdir(tmp_path)) == ["byte-level-bpe.tokenizer.json", "notes.txt"]  # no temp file left
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_pile_set_name_filter_and_max_documents(trained, tmp_path, capsys):
    assert train(tmp_path / "docs", "--pile_set_name", "PythonDocs") == 0
    assert "trained on 74 documents (47 filtered out" in capsys.readouterr().out
    docs = read(tmp_path / "docs" / tt.TOKENIZER_FILE)
    assert docs != read(trained[0])

    both = ("--pile_set_name", "PythonDocs", "--pile_set_name", "PythonDocstrings")
    assert train(tmp_path / "both", *both) == 0
    assert read(tmp_path / "both" / tt.TOKENIZER_FILE) == read(trained[0])

    assert train(tmp_path / "few", "--max_documents", "10", vocab_size=400) == 0
    assert "trained on 10 documents" in capsys.readouterr().out
    assert load_tokenizer(str(tmp_path / "few" / tt.TOKENIZER_FILE)).get_vocab_size() == 400


def test_txt_inputs_fewer_than_five_files(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(2):  # the original trained on a random 20 % of the files: none of 2
        (corpus / ("part%d.txt" % i)).write_text("hello tokenizer world, hello again tokenizer.\n" * 50)
    assert train(tmp_path / "out", inputs=(str(corpus),), vocab_size=300) == 0
    tokenizer = load_tokenizer(str(tmp_path / "out" / tt.TOKENIZER_FILE))
    assert tokenizer.get_vocab_size() <= 300 and "Ġtokenizer" in tokenizer.get_vocab()
    assert tokenizer.encode("hello tokenizer").tokens == ["Ġhello", "Ġtokenizer"]


@pytest.fixture
def bad_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"text": "a good document with words words words", "meta": {"pile_set_name": "X"}})
    path.write_text("\n".join([good, good, "{not json", good]) + "\n")
    return str(path)


@pytest.mark.parametrize("case, flags, message", [
    ("missing", ["--vocab_size", "1000"], "no input files at"),
    ("unsupported", ["--vocab_size", "1000"], "is not a supported input"),
    ("bad_line", ["--vocab_size", "300"], "line 3 is not a JSON object"),
    ("sample", ["--vocab_size", "257"], "--vocab_size must be at least 258"),
    ("sample", ["--vocab_size", "1000", "--min_frequency", "0"], "--min_frequency must be at least 1"),
    ("sample", ["--vocab_size", "1000", "--max_documents", "0"], "--max_documents must be at least 1"),
    ("sample", ["--vocab_size", "1000", "--pile_set_name", "Nope"], "no documents to train on (121 filtered"),
])
def test_errors(tmp_path, capsys, bad_jsonl, case, flags, message):
    unsupported = tmp_path / "data.csv"
    unsupported.write_text("text\n")
    inputs = {"missing": str(tmp_path / "nothing" / "*.jsonl.zst"), "unsupported": str(unsupported),
              "bad_line": bad_jsonl, "sample": TRAIN}[case]
    out = tmp_path / "out"
    assert tt_command.main(["--input", inputs, "--output_dir", str(out), *flags]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not out.exists()


def test_skip_bad_lines(tmp_path, capsys, bad_jsonl):
    assert train(tmp_path / "out", "--skip_bad_lines", inputs=(bad_jsonl,), vocab_size=300) == 0
    assert "trained on 3 documents (0 filtered out, 0 empty, 1 bad lines skipped)" in capsys.readouterr().out


def test_ftfy_option(tmp_path, capsys):
    if importlib.util.find_spec("ftfy") is None:
        assert train(tmp_path / "out", "--ftfy") == 2
        assert error_lines(capsys) == ["error: --ftfy needs the ftfy package (pip install ftfy)"]
        assert not (tmp_path / "out").exists()
    else:
        assert train(tmp_path / "out", "--ftfy", "--max_documents", "10", vocab_size=400) == 0


def test_input_dir_alias_and_several_inputs(tmp_path, capsys):
    val = os.path.join(SAMPLE, "val.jsonl.zst")
    assert tt_command.main(["--input", TRAIN, val, "--output_dir", str(tmp_path), "--vocab_size", "400"]) == 0
    assert "trained on 128 documents" in capsys.readouterr().out


def test_gcs_input_and_output(gcs_bucket, tmp_path):
    # A small input: the emulator's objects above ~130 kB crash TF's GCS reader (a test-setup limit).
    local = tmp_path / "small.jsonl"
    documents = [json.dumps({"text": "Document %d: return the value of the attribute.\n" % i * 20}) for i in range(40)]
    local.write_text("\n".join(documents) + "\n")
    source = gcs_bucket + "/tokenizer_corpus/small.jsonl"
    tf.io.gfile.makedirs(gcs_bucket + "/tokenizer_corpus")
    tf.io.gfile.copy(str(local), source, overwrite=True)
    output_dir = gcs_bucket + "/tokenizer_out"
    assert train(output_dir, inputs=(source,), vocab_size=300) == 0
    assert train(tmp_path / "local", inputs=(str(local),), vocab_size=300) == 0
    gcs_path = output_dir + "/" + tt.TOKENIZER_FILE
    assert read(gcs_path) == read(tmp_path / "local" / tt.TOKENIZER_FILE)
    assert load_tokenizer(gcs_path).token_to_id(END_OF_TEXT) == 0
    assert train(output_dir, inputs=(source,), vocab_size=300) == 2
    assert train(output_dir, "--overwrite", inputs=(source,), vocab_size=300) == 0
    assert tf.io.gfile.listdir(output_dir) == [tt.TOKENIZER_FILE]


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "gpt_neo_mtf.cli.train_tokenizer", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for flag in ("--input", "--output_dir", "--vocab_size", "--min_frequency", "--pile_set_name", "--ftfy",
                 "--skip_bad_lines", "--max_documents", "--overwrite"):
        assert flag in result.stdout

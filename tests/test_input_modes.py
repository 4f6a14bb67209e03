"""The generic_text input (chunks, documents_fixed, documents_random, weighted mixtures, eval
datasets) on real TFRecords, exact resume of every input mode, the batch-size record beside the
checkpoints, and short real training runs of each mode."""
import itertools
import json
import math
import os
import random
import re

import numpy as np
import pytest
from conftest import run_main, scalars, write_dataset_config

from gpt_neo_mtf.inputs import generic_text
from gpt_neo_mtf.inputs.pipeline import DATA_STATE, input_fn_for
from gpt_neo_mtf.inputs.sequential import DataError
from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.tfrecords_tools.create_tfrecords import create_tfrecords
from gpt_neo_mtf.tfrecords_tools.records import RecordWriter
from gpt_neo_mtf.trainer.config import ConfigError, DatasetEntry, load_config

EOS = 50256  # eos_id of the dataset configs make_config writes
N_CTX = 16


# ---------------------------------------------------------------------------------------------
# Records with known token ids


def write_file(path, token_lists):
    """One TFRecord file written by our record writer, named with its record count."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = RecordWriter(path + ".incomplete")
    for tokens in token_lists:
        writer.add(tokens)
    final = "%s_%d.tfrecords" % (path, len(token_lists))
    writer.finish(final)
    return final


def document(d):
    """Document d: ids d*100, d*100+1, ... (6 or 7 tokens); every third one ends with eos_id, as
    create_tfrecords' documents mode writes them, the others do not (as the original's did)."""
    length = 6 + d % 2
    tokens = [d * 100 + t for t in range(length)]
    if d % 3 == 0:
        tokens[-1] = EOS
    return tokens


def write_documents(directory, count=24, per_file=10, first=0):
    """Documents first .. first+count-1 in files of `per_file`; returns {doc number: tokens}."""
    docs = {d: document(d) for d in range(first, first + count)}
    numbers = sorted(docs)
    for i in range(0, count, per_file):
        write_file(os.path.join(str(directory), "docs_%d" % (i // per_file)),
                   [docs[d] for d in numbers[i:i + per_file]])
    return docs


def joined(docs):
    """The reference stitch: documents in order, eos_id between two unless the first ends with it."""
    out = []
    for i, doc in enumerate(docs):
        out += doc
        if i < len(docs) - 1 and doc[-1] != EOS:
            out.append(EOS)
    return out


def documents_in(window):
    """Document numbers in the order a window shows them (ids are d*100 + position in d)."""
    order, previous = [], None
    for token in window:
        if token == EOS:
            continue
        if previous is None or token // 100 != previous // 100 or token <= previous:
            order.append(token // 100)
        previous = token
    return order


def windows(batches):
    """The n_ctx + 1 tokens of every example: inputs plus the last label."""
    return [list(inputs) + [labels[-1]] for inputs_batch, labels_batch in batches
            for inputs, labels in zip(inputs_batch, labels_batch)]


def read_streams(*streams):
    """The windows of the first n examples of each (build, n) stream of unbatched (inputs, labels),
    all read in one graph and session."""
    with tf.Graph().as_default():
        fetches = [tf.data.make_one_shot_iterator(build().batch(n)).get_next() for build, n in streams]
        with tf.Session() as session:
            return [windows([batch]) for batch in session.run(fetches)]


def read_examples(build, n):
    return read_streams((build, n))[0]


# ---------------------------------------------------------------------------------------------
# documents_fixed / documents_random: stitched windows, shuffle blocks, offsets


def documents_stream(files, mode, start=0, seed=1, stitch=3, groups_per_block=8):
    entry = DatasetEntry("docs", stitch, mode, None)
    return generic_text.documents(files, entry, N_CTX, 50257, EOS, seed, 0, start, groups_per_block)


def test_documents_fixed_joins_each_shuffle_block_of_documents_once(tmp_path):
    docs = write_documents(tmp_path, count=24, per_file=10)  # 3 files: 10, 10, 4 documents
    files = sorted(tf.io.gfile.glob(str(tmp_path / "*.tfrecords")))
    # Blocks of 8 groups of 3 = 24 records = one pass through the files.
    got = read_examples(documents_stream(files, "documents_fixed"), 32)
    orders = []
    for window in got:
        order = documents_in(window)
        assert len(order) == 3  # 6-7 tokens each: the third document always starts inside the window
        assert window == joined([docs[d] for d in order])[:N_CTX + 1]
        orders.append(order)
    blocks = [sorted(d for order in orders[b * 8:(b + 1) * 8] for d in order) for b in range(4)]
    assert all(block == list(range(24)) for block in blocks)
    assert len({tuple(d for order in orders[b * 8:(b + 1) * 8] for d in order) for b in range(4)}) == 4
    assert [d for order in orders[:8] for d in order] != list(range(24))  # shuffled, not in file order


def test_documents_random_windows_start_anywhere_in_the_joined_documents(tmp_path):
    docs = write_documents(tmp_path, count=24, per_file=10)
    files = sorted(tf.io.gfile.glob(str(tmp_path / "*.tfrecords")))
    fixed, crops, other_seed = read_streams((documents_stream(files, "documents_fixed"), 64),
                                            (documents_stream(files, "documents_random"), 64),
                                            (documents_stream(files, "documents_random", seed=2), 64))
    offsets = []
    for prefix, window in zip(fixed, crops):
        text = joined([docs[d] for d in documents_in(prefix)])  # the same groups as documents_fixed
        starts = [r for r in range(len(text) - N_CTX) if text[r:r + N_CTX + 1] == window]
        assert starts, (text, window)
        offsets.append((starts[0], len(text) - (N_CTX + 1)))
    assert all(0 <= r <= last for r, last in offsets)
    assert any(r == 0 for r, _ in offsets) and any(r == last > 0 for r, last in offsets)
    assert len({r for r, _ in offsets}) >= 4
    assert other_seed != crops  # other seeds give other groups and offsets


def test_documents_stream_resumed_anywhere_equals_the_uninterrupted_stream(tmp_path):
    mode = "documents_random"  # documents_fixed differs only in the offset, always 0
    write_documents(tmp_path, count=20, per_file=7)  # blocks of 24 records straddle the 20-document passes
    files = sorted(tf.io.gfile.glob(str(tmp_path / "*.tfrecords")))
    starts = (0, 1, 8, 9, 21)  # at and across the block boundaries at 8, 16, 24
    whole, *resumed = read_streams(*[(documents_stream(files, mode, start=start), 30 - start) for start in starts])
    for start, examples in zip(starts[1:], resumed):
        assert examples == whole[start:]


def test_too_few_documents_to_fill_a_window_is_a_data_error(tmp_path):
    write_documents(tmp_path, count=6)
    files = tf.io.gfile.glob(str(tmp_path / "*.tfrecords"))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"Data error: dataset docs: 2 documents joined hold 1[2-4] tokens, fewer than "
                             r"n_ctx \+ 1 = 17; raise its stitch"):
        read_examples(documents_stream(files, "documents_fixed", stitch=2, groups_per_block=3), 1)


def test_documents_made_by_create_tfrecords_get_one_eos_between_them(tmp_path, gpt2_tokenizer):
    texts = ["The first document, long enough for most of a window.", "A second one.", "Third: short.",
             "And the fourth document closes the file."]
    source = tmp_path / "docs.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    create_tfrecords(str(source), str(tmp_path / "records"), "gpt2", name="docs", mode="documents")
    files = tf.io.gfile.glob(str(tmp_path / "records" / "*.tfrecords"))
    records = [gpt2_tokenizer.encode(t).ids + [EOS] for t in texts]  # documents mode appends the separator
    # One block = one group = all four documents, in a shuffled order.
    for window in read_examples(documents_stream(files, "documents_fixed", stitch=4, groups_per_block=1), 3):
        assert any(window == joined(list(order))[:N_CTX + 1] for order in itertools.permutations(records))


# ---------------------------------------------------------------------------------------------
# Mixing


def test_block_quotas_share_each_block_by_weight():
    assert generic_text.block_quotas([3, 1], 8) == [6, 2]
    assert generic_text.block_quotas([1, 1, 1], 7) == [3, 2, 2]  # the largest remainders round up
    assert generic_text.block_quotas([0.5, 0.25, 0.25], 65536) == [32768, 16384, 16384]
    assert generic_text.block_quotas([2, 1e-9], 16) == [16, 0]
    assert sum(generic_text.block_quotas([0.3, 0.3, 0.3, 0.1], 1000)) == 1000


def test_mixing_choices_resumed_anywhere_equal_the_uninterrupted_choices():
    quotas, key = [3, 2, 2], 12345  # blocks of 7 positions
    positions = (0, 1, 6, 7, 8, 13, 14, 30)
    with tf.Graph().as_default():
        fetches = [tf.data.make_one_shot_iterator(generic_text.choices(quotas, key, p).batch(40)).get_next()
                   for p in positions]
        with tf.Session() as session:
            whole, *resumed = session.run(fetches)
    for b in range(5):  # every block holds each dataset's quota, in a shuffled order
        assert sorted(whole[7 * b:7 * b + 7]) == [0, 0, 0, 1, 1, 2, 2]
    assert len({tuple(whole[7 * b:7 * b + 7]) for b in range(5)}) > 1
    for p, choices in zip(positions[1:], resumed):
        np.testing.assert_array_equal(choices[:40 - p], whole[p:40])
        assert generic_text.stream_starts(quotas, key, p) == [int(np.sum(whole[:p] == k)) for k in range(3)]


# ---------------------------------------------------------------------------------------------
# The generic_text input through the config


def chunk_record(base, r):
    """Chunk record r of a dataset: ids base + 20r ..., n_ctx + 1 to n_ctx + 3 tokens long."""
    return [base + 20 * r + t for t in range(N_CTX + 1 + r % 3)]


def write_chunks(root, base, sizes):
    """Files part_<i>_<count>.tfrecords of consecutive chunk records; returns the records per file."""
    per_file, r = [], 0
    for i, size in enumerate(sizes):
        tokens = [chunk_record(base, n) for n in range(r, r + size)]
        write_file(os.path.join(str(root), "part_%d" % i), tokens)
        per_file.append(tokens)
        r += size
    return per_file


@pytest.fixture
def known_records(tmp_path):
    """Documents (ids below 10000; eval documents 100.. are 10000 and up) and two chunk datasets
    (ids 20000.., eval 25000..; ids 30000.., eval 35000..) under tmp_path, each with train/ and val/."""
    docs = write_documents(tmp_path / "docs" / "train", count=24, per_file=10)
    docs.update(write_documents(tmp_path / "docs" / "val", count=6, per_file=6, first=100))
    chunks = {"train": write_chunks(tmp_path / "chunks" / "train", 20000, [5, 7, 3]),
              "val": write_chunks(tmp_path / "chunks" / "val", 25000, [4])}
    other = {"train": write_chunks(tmp_path / "other" / "train", 30000, [6, 4]),
             "val": write_chunks(tmp_path / "other" / "val", 35000, [3])}
    for name in ("docs", "chunks", "other"):
        write_dataset_config(tmp_path, name, str(tmp_path / name))
    return docs, chunks, other


def generic_config(make_config, tmp_path, datasets, **overrides):
    # make_config also writes a "sample" dataset config; these tests name only their own datasets.
    return load_config(make_config(records_dir=str(tmp_path / "docs"), input_fn="generic_text", n_ctx=N_CTX,
                                   datasets=datasets, **overrides))


def read_inputs(*input_fns):
    """The windows of the first n batches of each (input_fn, n), read in one graph and session."""
    with tf.Graph().as_default():
        fetches = [tf.data.make_one_shot_iterator(input_fn(None).batch(n)).get_next() for input_fn, n in input_fns]
        with tf.Session() as session:
            return [windows(zip(*batches)) for batches in session.run(fetches)]


def test_chunks_mode_reads_records_in_shuffled_file_order(tmp_path, make_config, known_records):
    _, chunks, _ = known_records
    config = generic_config(make_config, tmp_path, [["chunks", None, "chunks", None]], seed=3)
    files = sorted(tf.io.gfile.glob(str(tmp_path / "chunks" / "train" / "*.tfrecords")))
    by_file = dict(zip(files, chunks["train"]))
    random.seed(3)
    random.shuffle(files)
    stream = [record[:N_CTX + 1] for path in files for record in by_file[path]] * 3  # 15 records a pass
    [got] = read_inputs((input_fn_for(config, "train", 0), 9))
    assert got == stream[:36]


def test_mixture_follows_the_weights_and_keeps_each_stream_in_order(tmp_path, make_config, known_records):
    _, chunks, other = known_records
    datasets = [["chunks", None, "chunks", 3], ["other", None, "chunks", 1.0]]
    config = generic_config(make_config, tmp_path, datasets, shuffle_input_filenames=False, train_batch_size=16)
    reseeded = generic_config(make_config, tmp_path, datasets, shuffle_input_filenames=False, train_batch_size=16,
                              seed=2)
    got, other_seed = read_inputs((input_fn_for(config, "train", 0), 50), (input_fn_for(reseeded, "train", 0), 50))
    from_chunks = [w for w in got if w[0] < 30000]
    from_other = [w for w in got if w[0] >= 30000]
    # 800 draws without replacement from a block of 65536 holding 3/4 chunks: sd 12.2
    assert abs(len(from_chunks) - 600) < 50
    assert from_chunks == ([r[:N_CTX + 1] for f in chunks["train"] for r in f] * 50)[:len(from_chunks)]
    assert from_other == ([r[:N_CTX + 1] for f in other["train"] for r in f] * 80)[:len(from_other)]
    batch_shares = {sum(w[0] < 30000 for w in got[16 * b:16 * b + 16]) for b in range(50)}
    assert len(batch_shares) > 3  # batches differ in composition: the mixing is random, not a fixed pattern
    assert other_seed != got and abs(sum(w[0] < 30000 for w in other_seed) - 600) < 50


MODES = {
    "sequential": dict(records_dir="chunks", input_fn="sequential_input", datasets=[["chunks", None, None, None]]),
    "chunks": dict(datasets=[["chunks", None, "chunks", None]]),
    "documents_fixed": dict(datasets=[["docs", 3, "documents_fixed", None]]),
    "documents_random": dict(datasets=[["docs", 3, "documents_random", None]]),
    "mixture": dict(datasets=[["docs", 3, "documents_random", 2], ["chunks", None, "chunks", 1],
                              ["other", None, "chunks", 0.5]]),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_resumed_input_feeds_the_uninterrupted_runs_batches(tmp_path, make_config, known_records, mode):
    overrides = {"input_fn": "generic_text", "n_ctx": N_CTX, "train_batch_size": 4, **MODES[mode]}
    overrides["records_dir"] = str(tmp_path / overrides.pop("records_dir", "docs"))
    config = load_config(make_config(**overrides))
    steps = (0, 3, 7)
    whole, *resumed = read_inputs(*[(input_fn_for(config, "train", s), 12 - s) for s in steps])
    assert len(whole) == 48
    for step, windows_from_step in zip(steps[1:], resumed):
        assert windows_from_step == whole[4 * step:]


def test_eval_reads_the_eval_path_the_same_way_every_time(tmp_path, make_config, known_records):
    docs, chunks, other = known_records
    config = generic_config(make_config, tmp_path, MODES["mixture"]["datasets"], eval_batch_size=4)
    first, again = read_inputs((input_fn_for(config, "eval"), 10), (input_fn_for(config, "eval"), 10))
    assert first == again
    # The dataset of a window by its first token that is not eos (crops may start at an eos).
    source = [next(t for t in w if t != EOS) // 10000 for w in first]
    from_docs = [w for w, s in zip(first, source) if s < 2]
    from_chunks = [w for w, s in zip(first, source) if s == 2]
    from_other = [w for w, s in zip(first, source) if s == 3]
    assert from_docs and from_chunks and from_other
    assert from_chunks == ([r[:N_CTX + 1] for f in chunks["val"] for r in f] * 40)[:len(from_chunks)]
    assert from_other == ([r[:N_CTX + 1] for f in other["val"] for r in f] * 40)[:len(from_other)]
    for window in from_docs:  # a crop of eval documents (numbers 100..105) joined
        order = documents_in(window)
        assert all(100 <= d < 106 for d in order)
        # A crop starting at the eos that ends an earlier document shows that eos first.
        shown = window[1:] if window[0] == EOS else window
        text = joined([docs[d] for d in order])
        assert any(text[r:r + len(shown)] == shown for r in range(len(text)))


# ---------------------------------------------------------------------------------------------
# Config checks


@pytest.mark.parametrize("overrides, message", [
    ({"input_fn": "generic"}, "`input_fn` must be one of sequential_input, generic_text, got 'generic'; "
                              "did you mean 'generic_text'?"),
    ({"datasets": [["docs", 2, "documents", 1]]}, "`datasets` entry 'docs': generic_text needs a sampling_mode of "
                                                  "chunks, documents_fixed, documents_random, got \"documents\""),
    ({"datasets": [["docs", None, None, None]]}, "`datasets` entry 'docs': generic_text needs a sampling_mode of "
                                                 "chunks, documents_fixed, documents_random, got null"),
    ({"datasets": [["docs", None, "documents_random", 1]]}, "`datasets` entry 'docs': documents_random needs "
                                                            "stitch >= 1"),
    ({"datasets": [["docs", 0, "documents_fixed", 1]]},
     "`datasets` entry 'docs': documents_fixed needs stitch >= 1"),
    ({"datasets": [["chunks", None, "chunks", 0]]}, "`datasets` entry 'chunks': weight must be positive"),
], ids=["input_fn", "mode", "no-mode", "no-stitch", "stitch-0", "weight-0"])
def test_bad_generic_text_datasets_are_config_errors(tmp_path, make_config, known_records, overrides, message):
    overrides = {"input_fn": "generic_text", "datasets": [["docs", 2, "documents_fixed", None]], **overrides}
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        load_config(make_config(records_dir=str(tmp_path / "docs"), **overrides))


def test_sequential_input_ignores_the_sampling_fields(tmp_path, make_config, known_records):
    config = load_config(make_config(records_dir=str(tmp_path / "docs"),
                                     datasets=[["docs", None, "anything", -1]]))
    assert config.data.input_fn == "sequential_input"


def test_a_weight_too_small_to_be_drawn_is_a_data_error(tmp_path, make_config, known_records):
    config = generic_config(make_config, tmp_path,
                            [["chunks", None, "chunks", 1], ["other", None, "chunks", 1e-6]])
    with pytest.raises(DataError, match=r"^dataset other has weight 1e-06, less than 1/65536 of the total "
                                        r"1: it would never be read"):
        input_fn_for(config, "train", 0)


# ---------------------------------------------------------------------------------------------
# The batch size beside the checkpoints


def test_resuming_with_another_batch_size_is_refused(tmp_path, make_config, known_records):
    def config(batch):
        return load_config(make_config(records_dir=str(tmp_path / "chunks"), train_batch_size=batch))

    state = os.path.join(config(4).model_path, DATA_STATE)
    input_fn_for(config(4), "train", 0)
    assert json.load(open(state)) == {"train_batch_size": 4}
    input_fn_for(config(4), "train", 6)  # the same batch size resumes
    with pytest.raises(DataError) as error:
        input_fn_for(config(8), "train", 6)
    assert str(error.value) == (
        "train_batch_size is 8 but %s was trained with train_batch_size 4: resuming at step 6 with another "
        "batch size feeds other data than an uninterrupted run would; set train_batch_size back to 4, or "
        "delete %s to go on with 8 anyway" % (config(8).model_path, state))
    input_fn_for(config(8), "train", 0)  # a new start records the new batch size
    assert json.load(open(state)) == {"train_batch_size": 8}
    os.remove(state)
    input_fn_for(config(4), "train", 6)  # no record (e.g. a checkpoint from elsewhere): recorded now
    assert json.load(open(state)) == {"train_batch_size": 4}


# ---------------------------------------------------------------------------------------------
# Real training runs on the sample corpus


def losses(path):
    return scalars(json.load(open(path))["model_path"], "loss")


def test_documents_random_training_resumes_exactly_and_only_with_its_batch_size(make_config, sample_documents,
                                                                              capsys):
    generic = dict(records_dir=sample_documents, input_fn="generic_text", lr_decay_end=20,
                   datasets=[["sample", 2, "documents_random", None]])
    whole = make_config("whole", train_steps=20, **generic)
    assert run_main("--model", whole) == 0
    assert run_main("--model", make_config("halves", train_steps=10, **generic)) == 0
    resumed = make_config("halves", train_steps=20, **generic)  # the same model_path, on to step 20
    assert run_main("--model", resumed) == 0
    expected, got = losses(whole), losses(resumed)
    assert sorted(got) == sorted(expected) == list(range(1, 21))
    np.testing.assert_allclose([got[s] for s in range(1, 21)], [expected[s] for s in range(1, 21)],
                               rtol=0, atol=1e-6)
    assert all(math.isfinite(v) for v in expected.values())
    assert np.mean([expected[s] for s in range(16, 21)]) < np.mean([expected[s] for s in range(1, 6)])

    capsys.readouterr()
    assert run_main("--model", make_config("halves", train_steps=30, train_batch_size=8, **generic)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train_batch_size is 8 but ") and err.count("\n") == 1, err
    assert "was trained with train_batch_size 4: resuming at step 20" in err and DATA_STATE in err


def test_mixture_of_documents_and_chunks_trains(tmp_path, make_config, sample_documents, sample_records):
    write_dataset_config(tmp_path, "chunks", sample_records(32))
    path = make_config("mixture", records_dir=sample_documents, input_fn="generic_text",
                       datasets=[["sample", 2, "documents_fixed", 1], ["chunks", None, "chunks", 1]])
    assert run_main("--model", path) == 0
    loss = losses(path)
    assert sorted(loss) == list(range(1, 11)) and all(math.isfinite(v) for v in loss.values())
    assert np.mean([loss[s] for s in range(6, 11)]) < np.mean([loss[s] for s in range(1, 6)])

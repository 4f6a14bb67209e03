"""The default `sequential_input` pipeline on real TFRecords: file order, record counts, resume
positions, (inputs, labels) windows. Bad data through the real main.py: tests/test_bad_inputs.py."""
import os
import random

import numpy as np
import pytest

from gpt_neo_mtf.inputs.pipeline import input_fn_for
from gpt_neo_mtf.inputs.sequential import (DataError, dataset, natural_sort_key, record_count, resume_position,
                                           training_files)
from gpt_neo_mtf.meshtf import tf
from gpt_neo_mtf.trainer.config import DataConfig, DatasetConfig, DatasetEntry, load_config


# ---------------------------------------------------------------------------------------------
# Helpers


def write_records(path, records):
    """Write one TFRecord file whose records are the given token-id lists (feature `text`)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for tokens in records:
            feature = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(t) for t in tokens]))
            writer.write(tf.train.Example(features=tf.train.Features(feature={"text": feature}))
                         .SerializeToString())
    return path


def record_tokens(r, length):
    """Record number r holds ids r*100 .. r*100+length-1."""
    return list(range(r * 100, r * 100 + length))


def write_numbered_files(directory, sizes, length, prefix="d"):
    """Files d_<i>_<count>.tfrecords holding consecutively numbered records; returns (paths, record ids per file)."""
    paths, ids, r = [], [], 0
    for i, size in enumerate(sizes):
        numbers = list(range(r, r + size))
        r += size
        paths.append(write_records(os.path.join(str(directory), "%s_%d_%d.tfrecords" % (prefix, i, size)),
                                   [record_tokens(n, length) for n in numbers]))
        ids.append(numbers)
    return paths, ids


def read_batches(build, n):
    """Run `n` get_next() calls on the dataset `build()` makes, in a fresh graph and session."""
    with tf.Graph().as_default():
        batch = tf.data.make_one_shot_iterator(build()).get_next()
        with tf.Session() as session:
            return [session.run(batch) for _ in range(n)]


def touch(directory, names):
    os.makedirs(str(directory), exist_ok=True)
    paths = []
    for name in names:
        path = os.path.join(str(directory), name)
        open(path, "wb").close()
        paths.append(path)
    return paths


def data_config(*datasets, seed=1, shuffle=True):
    """A DataConfig over (id, path glob, eval_path glob) triples."""
    configs = tuple(DatasetConfig(id=i, n_vocab=50257, path=p, eval_path=e) for i, p, e in datasets)
    return DataConfig(datasets=tuple(DatasetEntry(i) for i, _, _ in datasets), dataset_configs=configs,
                      seed=seed, shuffle_input_filenames=shuffle)


# ---------------------------------------------------------------------------------------------
# natural_sort_key


def test_natural_sort_key_orders_digit_runs_as_numbers():
    names = ["f_10", "f_2", "f_1", "f_100", "f_9"]
    assert sorted(names, key=natural_sort_key) == ["f_1", "f_2", "f_9", "f_10", "f_100"]
    assert natural_sort_key("f_2") < natural_sort_key("f_10")
    assert sorted(["data_0_10.tfrecords", "data_0_9.tfrecords", "data_1_2.tfrecords"], key=natural_sort_key) \
        == ["data_0_9.tfrecords", "data_0_10.tfrecords", "data_1_2.tfrecords"]


def test_natural_sort_key_is_case_insensitive():
    assert natural_sort_key("F_2") == natural_sort_key("f_2")
    assert sorted(["b_1", "A_2", "a_10", "B_0"], key=natural_sort_key) == ["A_2", "a_10", "B_0", "b_1"]
    assert sorted(["Zeta", "alpha", "Beta"], key=natural_sort_key) == ["alpha", "Beta", "Zeta"]


# ---------------------------------------------------------------------------------------------
# training_files


NAMES = ["shard_%d_5.tfrecords" % i for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 20, 100)]


def expected_natural(paths):
    # Independent of natural_sort_key: the shard number is the only varying part of these names.
    return sorted(paths, key=lambda p: int(os.path.basename(p).split("_")[1]))


def test_training_files_are_natural_sorted_then_shuffled_with_python_random(tmp_path):
    paths = touch(tmp_path / "train", reversed(NAMES))
    natural = expected_natural(paths)
    expected = list(natural)
    random.seed(1)
    random.shuffle(expected)
    files = training_files(data_config(("a", str(tmp_path / "train" / "*.tfrecords"), None), seed=1))
    assert files == expected
    assert files != natural and sorted(files) == sorted(paths)


def test_training_file_order_changes_with_the_seed(tmp_path):
    touch(tmp_path / "train", NAMES)
    glob = str(tmp_path / "train" / "*.tfrecords")
    orders = {}
    for seed in (1, 2, 3):
        files = training_files(data_config(("a", glob, None), seed=seed))
        natural = expected_natural(files)
        random.seed(seed)
        random.shuffle(natural)
        assert files == natural
        orders[seed] = files
    assert orders[1] != orders[2] and orders[2] != orders[3] and orders[1] != orders[3]
    # The same seed gives the same order again.
    assert training_files(data_config(("a", glob, None), seed=2)) == orders[2]


def test_training_files_unshuffled_when_shuffle_input_filenames_is_false(tmp_path):
    paths = touch(tmp_path / "train", reversed(NAMES))
    files = training_files(data_config(("a", str(tmp_path / "train" / "*.tfrecords"), None), shuffle=False))
    assert files == expected_natural(paths)


def test_eval_files_are_natural_sorted_and_never_shuffled(tmp_path):
    touch(tmp_path / "train", NAMES)
    evals = touch(tmp_path / "val", reversed(NAMES))
    cfg = data_config(("a", str(tmp_path / "train" / "*.tfrecords"), str(tmp_path / "val" / "*.tfrecords")),
                      seed=5, shuffle=True)
    assert training_files(cfg, eval_files=True) == expected_natural(evals)


def test_training_files_of_several_datasets_are_sorted_together_then_shuffled(tmp_path):
    a = touch(tmp_path / "a", ["x_%d_1.tfrecords" % i for i in (3, 1, 20)])
    b = touch(tmp_path / "b", ["x_%d_1.tfrecords" % i for i in (2, 10)])
    cfg = data_config(("a", str(tmp_path / "a" / "*.tfrecords"), None),
                      ("b", str(tmp_path / "b" / "*.tfrecords"), None), seed=7)
    natural = sorted(a + b, key=lambda p: (os.path.basename(os.path.dirname(p)),
                                           int(os.path.basename(p).split("_")[1])))
    expected = list(natural)
    random.seed(7)
    random.shuffle(expected)
    assert training_files(cfg) == expected


def test_training_files_through_load_config(tmp_path, make_config):
    paths = touch(tmp_path / "records" / "train", reversed(NAMES))
    touch(tmp_path / "records" / "val", ["v_0_1.tfrecords"])
    config = load_config(make_config(records_dir=str(tmp_path / "records"), seed=42))
    expected = expected_natural(paths)
    random.seed(42)
    random.shuffle(expected)
    assert training_files(config.data) == expected
    unshuffled = load_config(make_config(records_dir=str(tmp_path / "records"), shuffle_input_filenames=False))
    assert training_files(unshuffled.data) == expected_natural(paths)


def test_training_files_glob_matching_nothing_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="matches no files"):
        training_files(data_config(("a", str(tmp_path / "nothing" / "*.tfrecords"), None)))


# ---------------------------------------------------------------------------------------------
# record_count


def test_record_count_is_parsed_from_the_file_name(tmp_path):
    # The files are empty: the count comes from the name alone.
    x17, conv = touch(tmp_path, ["x_17.tfrecords", "data_3_250.tfrecords"])
    assert record_count(x17) == 17
    assert record_count(conv) == 250


def test_record_count_reads_a_file_without_a_count_in_its_name(tmp_path):
    path = write_records(str(tmp_path / "plain.tfrecords"), [record_tokens(r, 5) for r in range(7)])
    assert record_count(path) == 7
    named = write_records(str(tmp_path / "records-final.tfrecords"), [record_tokens(0, 3)] * 4)
    assert record_count(named) == 4


# ---------------------------------------------------------------------------------------------
# resume_position

SIZES = {"a": 3, "b": 5, "c": 2}  # 10 records per epoch


@pytest.mark.parametrize("seen, expected", [
    (0, (0, 0)), (1, (0, 1)), (2, (0, 2)),
    (3, (1, 0)),                      # exactly at the a|b boundary
    (4, (1, 1)), (7, (1, 4)),
    (8, (2, 0)),                      # exactly at the b|c boundary
    (9, (2, 1)),
    (10, (0, 0)),                     # exactly one epoch: back to the start
    (11, (0, 1)), (13, (1, 0)), (25, (1, 2)), (38, (2, 0)), (1000009, (2, 1)),
])
def test_resume_position_by_hand(seen, expected):
    assert resume_position(["a", "b", "c"], seen, count=SIZES.__getitem__) == expected


def test_resume_position_counts_only_the_files_it_needs():
    asked = []

    def count(path):
        asked.append(path)
        return SIZES[path]

    assert resume_position(["a", "b", "c"], 2, count) == (0, 2)
    assert asked == ["a"]
    asked.clear()
    assert resume_position(["a", "b", "c"], 4, count) == (1, 1)
    assert asked == ["a", "b"]
    asked.clear()
    assert resume_position(["a", "b", "c"], 3, count) == (1, 0)
    assert asked == ["a", "b"]
    asked.clear()
    # Beyond one epoch every file is counted, and only once.
    assert resume_position(["a", "b", "c"], 14, count) == (1, 1)
    assert asked == ["a", "b", "c"]


def test_resume_position_skips_empty_files():
    sizes = {"a": 3, "empty": 0, "c": 2}
    assert resume_position(["a", "empty", "c"], 3, sizes.__getitem__) == (2, 0)
    assert resume_position(["a", "empty", "c"], 5, sizes.__getitem__) == (0, 0)
    assert resume_position(["a", "empty", "c"], 9, sizes.__getitem__) == (2, 1)


def test_resume_position_without_records_is_a_data_error():
    with pytest.raises(DataError, match="hold no records"):
        resume_position(["a", "b"], 5, count=lambda path: 0)


def test_resume_position_with_real_files(tmp_path):
    paths, _ = write_numbered_files(tmp_path, [3, 5, 2], 4)
    plain = write_records(str(tmp_path / "plain.tfrecords"), [record_tokens(r, 4) for r in range(4)])
    files = paths + [plain]  # 3 + 5 + 2 + 4 = 14, the last one counted by reading it
    assert resume_position(files, 9) == (2, 1)
    assert resume_position(files, 12) == (3, 2)
    assert resume_position(files, 14 * 3 + 10) == (3, 0)


# ---------------------------------------------------------------------------------------------
# dataset(): (inputs, labels) windows

N_CTX, N_VOCAB = 8, 1000


def expected_windows(record_numbers, n_ctx=N_CTX):
    tokens = np.array([record_tokens(r, n_ctx + 1) for r in record_numbers])
    return tokens[:, :n_ctx], tokens[:, 1:]


def test_dataset_shifts_by_one_in_file_order(tmp_path):
    paths, ids = write_numbered_files(tmp_path, [2, 3, 1], N_CTX + 1)
    batches = read_batches(lambda: dataset(paths, N_CTX, N_VOCAB, batch_size=2), 6)
    stream = [r for file_ids in ids for r in file_ids] * 2  # 6 records per epoch, 12 read
    for i, (inputs, labels) in enumerate(batches):
        assert inputs.dtype == np.int32 and inputs.shape == labels.shape == (2, N_CTX)
        want_inputs, want_labels = expected_windows(stream[2 * i:2 * i + 2])
        np.testing.assert_array_equal(inputs, want_inputs)
        np.testing.assert_array_equal(labels, want_labels)
    first_inputs, first_labels = batches[0]
    np.testing.assert_array_equal(first_inputs[0], np.arange(0, 8))
    np.testing.assert_array_equal(first_labels[0], np.arange(1, 9))
    np.testing.assert_array_equal(first_inputs[1], np.arange(100, 108))
    np.testing.assert_array_equal(batches[1][0][0], np.arange(200, 208))


def test_dataset_follows_the_given_file_list_order(tmp_path):
    paths, ids = write_numbered_files(tmp_path, [1, 2, 1], N_CTX + 1)
    order = [paths[2], paths[0], paths[1]]
    batches = read_batches(lambda: dataset(order, N_CTX, N_VOCAB, batch_size=4), 2)
    for inputs, labels in batches:
        want_inputs, want_labels = expected_windows(ids[2] + ids[0] + ids[1])
        np.testing.assert_array_equal(inputs, want_inputs)
        np.testing.assert_array_equal(labels, want_labels)


def test_dataset_truncates_long_records(tmp_path):
    path = write_records(str(tmp_path / "long_0_3.tfrecords"),
                         [record_tokens(r, length) for r, length in ((0, N_CTX + 1), (1, N_CTX + 7), (2, 60))])
    [(inputs, labels)] = read_batches(lambda: dataset([path], N_CTX, N_VOCAB, batch_size=3), 1)
    want_inputs, want_labels = expected_windows([0, 1, 2])
    np.testing.assert_array_equal(inputs, want_inputs)
    np.testing.assert_array_equal(labels, want_labels)


def test_dataset_drops_no_record_at_the_epoch_boundary(tmp_path):
    # 5 records per epoch, batch 2: batches straddle the wrap, nothing is dropped or repeated.
    paths, ids = write_numbered_files(tmp_path, [2, 3], N_CTX + 1)
    batches = read_batches(lambda: dataset(paths, N_CTX, N_VOCAB, batch_size=2), 5)
    got = [int(row[0]) // 100 for inputs, _ in batches for row in inputs]
    assert got == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]


@pytest.mark.parametrize("position", [0, 2, 3, 5, 7, 8, 9, 12, 21])
def test_dataset_resumed_equals_the_uninterrupted_stream(tmp_path, position):
    paths, ids = write_numbered_files(tmp_path, [3, 5, 2], N_CTX + 1)  # 10 records per epoch
    stream = [r for file_ids in ids for r in file_ids] * 4
    start_file, skip = resume_position(paths, position)
    n_batches = 5  # 15 records: always crosses into the next epoch
    batches = read_batches(lambda: dataset(paths, N_CTX, N_VOCAB, 3, start_file, skip), n_batches)
    got = np.concatenate([inputs for inputs, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    want_inputs, want_labels = expected_windows(stream[position:position + 3 * n_batches])
    np.testing.assert_array_equal(got, want_inputs)
    np.testing.assert_array_equal(labels, want_labels)


def test_input_fn_resumes_at_global_step_times_batch(tmp_path, make_config):
    n_ctx = 32
    root = tmp_path / "records"
    paths, ids = write_numbered_files(root / "train", [3, 4, 2, 5], n_ctx + 1, prefix="part")
    write_records(str(root / "val" / "v_0_1.tfrecords"), [record_tokens(0, n_ctx + 1)])
    config = load_config(make_config(records_dir=str(root), seed=3, train_batch_size=4))
    by_path = dict(zip(paths, ids))
    files = training_files(config.data)
    stream = [r for path in files for r in by_path[path]] * 4  # 14 records per epoch, in shuffled file order
    for step in (0, 1, 3, 4):  # examples seen: 0, 4, 12, 16 (past one epoch)
        batches = read_batches(lambda: input_fn_for(config, "train", step)(None), 2)
        got = np.concatenate([inputs for inputs, _ in batches])
        seen = step * 4
        want_inputs, _ = expected_windows(stream[seen:seen + 8], n_ctx)
        np.testing.assert_array_equal(got, want_inputs)


def test_dataset_rejects_short_records(tmp_path):
    path = write_records(str(tmp_path / "short_0_2.tfrecords"), [record_tokens(0, N_CTX + 1), record_tokens(1, N_CTX)])
    with pytest.raises(tf.errors.InvalidArgumentError, match="tokens, fewer than n_ctx \\+ 1 = 9"):
        read_batches(lambda: dataset([path], N_CTX, N_VOCAB, batch_size=2), 1)


def test_dataset_rejects_token_ids_outside_the_vocabulary(tmp_path):
    big = write_records(str(tmp_path / "big_0_1.tfrecords"), [[1] * N_CTX + [N_VOCAB]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="ids must be < n_vocab = 1000"):
        read_batches(lambda: dataset([big], N_CTX, N_VOCAB, batch_size=1), 1)
    negative = write_records(str(tmp_path / "neg_0_1.tfrecords"), [[1] * 3 + [-5] + [1] * N_CTX])
    with pytest.raises(tf.errors.InvalidArgumentError, match="negative token id"):
        read_batches(lambda: dataset([negative], N_CTX, N_VOCAB, batch_size=1), 1)


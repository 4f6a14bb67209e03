"""The default `sequential_input` pipeline: TFRecords read in a fixed order, resumable by step.

Training files are the datasets' `path` globs, naturally sorted, then shuffled once with
Python's `random.seed(seed)` + `random.shuffle` (the original's order, reproduced exactly), and
read one after another, forever. Resuming at global step s skips the first s * batch records
of that cyclic stream, using per-file record counts parsed from the file names
(`..._<count>.tfrecords`). Each record's first n_ctx + 1 tokens become inputs [0:n] and labels [1:n+1].
The record-reading pieces (file order, resume positions, checked windows) also serve generic_text.
"""
import random

from ..errors import UserError
from ..meshtf import tf
from ..storage import count_in_name, natural_sort_key


class DataError(UserError):
    """A problem with the training data, worded for the user."""


def list_files(globs, what):
    files = []
    for pattern in globs:
        matched = tf.io.gfile.glob(pattern)
        if not matched:
            raise DataError("%s glob %s matches no files; check the dataset config's path or create "
                            "the TFRecords first" % (what, pattern))
        directories = [path for path in matched if tf.io.gfile.isdir(path)]
        if directories:
            raise DataError("%s %s matches the directory %s, not TFRecord files; name the files, e.g. %s/*.tfrecords"
                            % (what, pattern, directories[0], directories[0].rstrip("/")))
        files += matched
    return sorted(files, key=natural_sort_key)


def dataset_glob(dataset_config, eval_files=False):
    key = "eval_path" if eval_files else "path"
    pattern = getattr(dataset_config, key)
    if not pattern:
        raise DataError("dataset config %r has no `%s`" % (dataset_config.id, key))
    return pattern


def ordered_files(data_config, globs, eval_files=False):
    """The files of `globs` in reading order: natural sort, then (training files, when
    `shuffle_input_filenames`) the original's shuffle: `random.seed(seed)` + `random.shuffle`."""
    files = list_files(globs, "dataset `%s`" % ("eval_path" if eval_files else "path"))
    if not eval_files and data_config.shuffle_input_filenames:
        random.Random(data_config.seed).shuffle(files)  # the same order as random.seed + random.shuffle
    return files


def training_files(data_config, eval_files=False):
    """All datasets' files, sorted and shuffled together (the sequential input's one stream)."""
    globs = [dataset_glob(ds, eval_files) for ds in data_config.dataset_configs]
    return ordered_files(data_config, globs, eval_files)


def record_count(path):
    """Records in a file: from its name when it carries a count, else by reading it."""
    named = count_in_name(path)
    if named is not None:
        return named
    return sum(1 for _ in tf.io.tf_record_iterator(path))


def _locate(counts, position):
    for index, n in enumerate(counts):
        if position < n:
            return index, position
        position -= n
    return None


def resume_position(files, examples_seen, count=record_count):
    """(file index, records to skip in it) after `examples_seen` records of the cyclic file stream.

    Files are only counted as far as needed, so resuming inside the first epoch of a dataset
    whose names carry no counts reads just the files before the resume point.
    """
    counts = []

    def counted():
        for path in files:
            counts.append(count(path))
            yield counts[-1]

    found = _locate(counted(), examples_seen)
    if found:
        return found
    if sum(counts) == 0:
        raise DataError("the training files hold no records: %s" % ", ".join(files[:3]))
    return _locate(counts, examples_seen % sum(counts))


def check(condition, *message):
    """An input-pipeline assertion whose first data item is a complete message for the user."""
    return tf.debugging.Assert(condition, [tf.strings.join(
        [m if isinstance(m, str) else tf.strings.as_string(m) for m in message])])


def records(files, start_file=0, skip=0):
    """Serialized records of the endless stream through `files`, from record `skip` of file `start_file`."""
    first = tf.data.TFRecordDataset(files[start_file:]).skip(skip)
    return first.concatenate(tf.data.TFRecordDataset(files).repeat())


def shifted(window, n_ctx, n_vocab):
    """(inputs, labels) = window[0:n_ctx], window[1:n_ctx+1] of n_ctx + 1 token ids, checked against n_vocab."""
    checks = [
        check(tf.reduce_max(window) < n_vocab, "Data error: a TFRecord holds token id ", tf.reduce_max(window),
              ", but ids must be < n_vocab = %d: the data was encoded with a larger vocabulary; raise "
              "n_vocab or re-encode the data" % n_vocab),
        check(tf.reduce_min(window) >= 0, "Data error: a TFRecord holds a negative token id ",
              tf.reduce_min(window)),
    ]
    with tf.control_dependencies(checks):
        window = tf.reshape(tf.cast(window, tf.int32), [n_ctx + 1])
    return window[:n_ctx], window[1:]


def record_window(record, n_ctx, n_vocab):
    """(inputs, labels) from the first n_ctx + 1 tokens of a serialized record."""
    tokens = tf.io.parse_single_example(record, {"text": tf.io.VarLenFeature(tf.int64)})["text"]
    tokens = tf.sparse.to_dense(tokens)
    long_enough = check(tf.size(tokens) >= n_ctx + 1, "Data error: a TFRecord record has ", tf.size(tokens),
                        " tokens, fewer than n_ctx + 1 = %d; re-create the TFRecords with --chunk_size %d or more"
                        % (n_ctx + 1, n_ctx))
    with tf.control_dependencies([long_enough]):
        return shifted(tokens[:n_ctx + 1], n_ctx, n_vocab)


def dataset(files, n_ctx, n_vocab, batch_size, start_file=0, skip=0, prefetch=2):
    """(inputs, labels) batches [batch, n_ctx], cycling through `files` from (start_file, skip)."""
    ds = records(files, start_file, skip).map(lambda r: record_window(r, n_ctx, n_vocab),
                                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size, drop_remainder=True).prefetch(prefetch)


def dataset_fn(config, mode, global_step=0):
    """A function building the `mode` ("train" or "eval") dataset, training resumed at `global_step`.

    Files are listed and the resume position found now, so data problems surface before any graph.
    """
    m, t = config.model, config.train
    batch = t.batch_size(mode)
    files = training_files(config.data, eval_files=(mode == "eval"))
    start_file, skip = (resume_position(files, global_step * batch) if mode == "train" else (0, 0))
    return lambda: dataset(files, m.n_ctx, m.n_vocab, batch, start_file, skip, prefetch=2 * t.iterations)

"""The `generic_text` input: one stream per `datasets` entry [id, stitch, sampling_mode, weight],
in one of three sampling modes, mixed by weight.

Sampling modes:
  chunks            records of n_ctx + 1 tokens or more (create_tfrecords' chunks mode) in file
                    order: inputs = record[0:n_ctx], labels = record[1:n_ctx+1] (the original
                    never turned these records into examples).
  documents_fixed   records are documents (create_tfrecords --mode documents), shuffled in blocks of
                    1000 × stitch records; each example joins `stitch` consecutive documents with
                    the dataset config's eos_id between them (none after a document that already
                    ends with it) and takes the first n_ctx + 1 tokens.
  documents_random  as documents_fixed, but the n_ctx + 1 tokens start at an offset drawn uniformly
                    from [0, length - (n_ctx + 1)].
Files of each dataset are read one after another, naturally sorted and (training files) shuffled
once with `seed`, as the sequential input reads them.

Mixing: positions of the mixed stream come in blocks of MIX_BLOCK; every block holds each dataset's
share of them (its weight over the total, rounded to whole examples) at positions shuffled with `seed`.

Resuming: every example is a function of its position and `seed` alone (block shuffles, window
offsets and mixing draw stateless random numbers keyed by block or example index), so training
resumed at step s starts the streams at example s × train_batch_size and feeds exactly the
batches an uninterrupted run feeds from step s. Nothing about the data lives in the checkpoint.
"""
import hashlib

import numpy as np

from .sequential import DataError, check, dataset_glob, ordered_files, record_window, records, resume_position, shifted
from ..meshtf import tf

# Stitched examples per document shuffle block: the original shuffled in a buffer of 1000 × stitch documents.
GROUPS_PER_BLOCK = 1000
# Positions per mixing block; each dataset's share is rounded to whole examples per block.
MIX_BLOCK = 1 << 16


def random_key(seed, *parts):
    """A 63-bit key for stateless random ops, distinct for each (seed, *parts)."""
    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def random_seed(key, index):
    """The seed of a stateless random op drawing for `index` (a block or example) under `key`."""
    return tf.stack([tf.constant(key, tf.int64), tf.cast(index, tf.int64)])


# ---------------------------------------------------------------------------------------------
# One dataset's stream of (inputs, labels) examples, from example `start` on


def chunks(files, n_ctx, n_vocab, start):
    """Builder of the chunks-mode stream: record i of the endless file stream is example i."""
    start_file, skip = resume_position(files, start)
    return lambda: records(files, start_file, skip).map(
        lambda record: record_window(record, n_ctx, n_vocab),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def stitched(group, eos_id):
    """The documents of `group` (serialized records) as one token sequence, eos_id after every
    document but the last unless it already ends with eos_id."""
    docs = tf.RaggedTensor.from_sparse(
        tf.io.parse_example(group, {"text": tf.io.VarLenFeature(tf.int64)})["text"])
    # A document's last token, read one place after its end in the values shifted right by one.
    ends = tf.gather(tf.concat([tf.constant([-1], tf.int64), docs.flat_values], 0), docs.row_limits())
    unterminated = tf.logical_or(tf.equal(docs.row_lengths(), 0), tf.not_equal(ends, eos_id))
    not_last = tf.range(docs.nrows()) < docs.nrows() - 1
    separators = tf.cast(tf.logical_and(not_last, unterminated), tf.int64)
    eos = tf.RaggedTensor.from_row_lengths(
        tf.fill([tf.reduce_sum(separators)], tf.constant(eos_id, tf.int64)), separators)
    return tf.concat([docs, eos], axis=1).flat_values


def documents(files, entry, n_ctx, n_vocab, eos_id, seed, entry_index, start,
              groups_per_block=GROUPS_PER_BLOCK):
    """Builder of a documents-mode stream (`entry.sampling_mode` documents_fixed or documents_random).

    Shuffle block b is records b·K .. (b+1)·K - 1 of the endless file stream (K = groups_per_block ×
    stitch), permuted with a key of (seed, entry_index, b); its groups of `stitch` consecutive records
    are examples b·groups_per_block, b·groups_per_block + 1, ... A resume reads its first block whole.
    """
    stitch = entry.stitch
    block_records = groups_per_block * stitch
    first_block, skip_groups = divmod(start, groups_per_block)
    start_file, skip = resume_position(files, first_block * block_records)
    shuffle_key = random_key(seed, entry_index, "shuffle")
    offset_key = random_key(seed, entry_index, "offset") if entry.sampling_mode == "documents_random" else None
    too_short = (" tokens, fewer than n_ctx + 1 = %d; raise its stitch (stitch x shortest document >= "
                 "n_ctx + 1) or leave out short documents (create_tfrecords --minimum_size)" % (n_ctx + 1))

    def shuffle(block, serialized):
        serialized = tf.random.experimental.stateless_shuffle(serialized, seed=random_seed(shuffle_key, block))
        return tf.reshape(serialized, [groups_per_block, stitch])

    def example(index, group):
        text = stitched(group, eos_id)
        length = tf.size(text, out_type=tf.int64)
        long_enough = check(length >= n_ctx + 1, "Data error: dataset %s: %d documents joined hold "
                            % (entry.id, stitch), length, too_short)
        with tf.control_dependencies([long_enough]):
            offset = 0
            if offset_key is not None:
                offset = tf.random.stateless_uniform([], seed=random_seed(offset_key, index), minval=0,
                                                     maxval=length - n_ctx, dtype=tf.int64)
            return shifted(text[offset:offset + n_ctx + 1], n_ctx, n_vocab)

    def build():
        blocks = records(files, start_file, skip).batch(block_records).enumerate(first_block)
        # One block ahead, so reading the next block overlaps with using this one.
        groups = blocks.map(shuffle).prefetch(1).unbatch().skip(skip_groups)
        return groups.enumerate(start).map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    return build


# ---------------------------------------------------------------------------------------------
# Mixing


def block_quotas(weights, block_size=MIX_BLOCK):
    """Positions per mixing block for each dataset: shares of `block_size` by weight, largest remainders
    rounded up."""
    exact = np.array(weights, np.float64) / sum(weights) * block_size
    quotas = np.floor(exact).astype(np.int64)
    quotas[np.argsort(quotas - exact, kind="stable")[:block_size - quotas.sum()]] += 1
    return [int(q) for q in quotas]


def block_choices(block, quotas, key):
    """Dataset index of every position of mixing block `block` (an int64 tensor)."""
    choices = tf.repeat(tf.range(len(quotas), dtype=tf.int64), quotas)
    return tf.random.experimental.stateless_shuffle(choices, seed=random_seed(key, block))


def stream_starts(quotas, key, position):
    """How many examples each dataset has given before `position` of the mixed stream."""
    block, offset = divmod(position, sum(quotas))
    starts = [block * q for q in quotas]
    if offset:
        # The same graph function the pipeline uses, evaluated once for the partial block.
        with tf.Graph().as_default(), tf.Session() as session:
            first = session.run(block_choices(tf.constant(block, tf.int64), quotas, key)[:offset])
        starts = [s + int(np.sum(first == k)) for k, s in enumerate(starts)]
    return starts


def choices(quotas, key, position):
    """The dataset index of every position of the mixed stream from `position` on."""
    block, offset = divmod(position, sum(quotas))
    blocks = tf.data.Dataset.range(block, np.iinfo(np.int64).max)
    return blocks.map(lambda b: block_choices(b, quotas, key)).unbatch().skip(offset)


# ---------------------------------------------------------------------------------------------
# The input


def weight_of(entry):
    """A `datasets` entry's weight; null weighs 1."""
    return 1.0 if entry.weight is None else entry.weight


def dataset_fn(config, mode, global_step=0):
    """A function building the `mode` ("train" or "eval", from eval_path) dataset of batches,
    training resumed at `global_step`.

    Files are listed and every stream's start found now, so data problems surface before any graph.
    """
    m, t, d = config.model, config.train, config.data
    eval_files = mode == "eval"
    batch = t.batch_size(mode)
    position = global_step * batch if mode == "train" else 0
    by_id = {ds.id: ds for ds in d.dataset_configs}
    weights = [weight_of(entry) for entry in d.datasets]
    quotas = block_quotas(weights)
    for entry, quota in zip(d.datasets, quotas):
        if quota == 0:
            raise DataError("dataset %s has weight %g, less than 1/%d of the total %g: it would never be "
                            "read; raise its weight or remove it from `datasets`"
                            % (entry.id, weight_of(entry), MIX_BLOCK, sum(weights)))
    mix_key = random_key(d.seed, "mix")
    starts = stream_starts(quotas, mix_key, position) if len(quotas) > 1 else [position]
    streams = []
    for k, (entry, start) in enumerate(zip(d.datasets, starts)):
        files = ordered_files(d, [dataset_glob(by_id[entry.id], eval_files)], eval_files)
        if entry.sampling_mode == "chunks":
            streams.append(chunks(files, m.n_ctx, m.n_vocab, start))
        else:
            streams.append(documents(files, entry, m.n_ctx, m.n_vocab, by_id[entry.id].eos_id, d.seed, k, start))

    def build():
        if len(streams) == 1:
            examples = streams[0]()
        else:
            examples = tf.data.Dataset.choose_from_datasets([s() for s in streams],
                                                            choices(quotas, mix_key, position))
        return examples.batch(batch, drop_remainder=True).prefetch(2 * t.iterations)

    return build

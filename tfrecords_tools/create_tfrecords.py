"""Text and Pile shards (*.jsonl.zst) -> TFRecords that main.py reads, on local disk or gs://.

Documents are tokenized, each followed by the separator (end-of-text) token, and the token
stream is cut into records of exactly chunk_size + 1 tokens. Unlike the original, a document's
tail carries over into the next document instead of being dropped, so short documents are
kept. Files are named `<name>_<index>_<records>.tfrecords` (the reader parses the count) and
appear under their final name only once complete.

    python -m tfrecords_tools.create_tfrecords --input_dir data/sample/train.jsonl.zst \
        --output_dir build/sample/train --encoder_path gpt2 --chunk_size 128
"""
import argparse
import io
import json
import os
import sys

import zstandard

from inputs.sequential import natural_sort_key
from inputs.tokenizer import END_OF_TEXT, TokenizerError, load_tokenizer
from meshtf import tf

INPUT_PATTERNS = ("*.jsonl.zst", "*.jsonl", "*.txt")


def input_files(input_path):
    """A file, a glob, or a directory scanned for *.jsonl.zst, *.jsonl and *.txt."""
    if tf.io.gfile.isdir(input_path):
        files = [f for pattern in INPUT_PATTERNS for f in tf.io.gfile.glob(os.path.join(input_path, pattern))]
    else:
        files = tf.io.gfile.glob(input_path)
    if not files:
        raise FileNotFoundError("no input files at %s (looked for %s)" % (input_path, ", ".join(INPUT_PATTERNS)))
    return sorted(files, key=natural_sort_key)


def read_documents(path):
    """Texts of one file: each JSON line's `text` (a list is joined by blank lines), or a whole .txt."""
    with tf.io.gfile.GFile(path, "rb") as raw:
        if path.endswith(".txt"):
            yield raw.read().decode("utf-8")
            return
        if path.endswith(".zst"):
            lines = io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw), encoding="utf-8")
        else:
            lines = (line.decode("utf-8") for line in raw)
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                text = None
            if isinstance(text, list) and all(isinstance(t, str) for t in text):
                text = "\n\n".join(text)
            if not isinstance(text, str):
                raise ValueError("%s line %d is not a JSON object with a \"text\" string (or list of strings)"
                                 % (path, number))
            yield text


def chunks(token_lists, length):
    """Consecutive pieces of exactly `length` tokens from the concatenated lists (the last partial one is dropped)."""
    pending = []
    for tokens in token_lists:
        pending.extend(tokens)
        while len(pending) >= length:
            yield pending[:length]
            del pending[:length]


def serialize(tokens):
    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=tokens))
    return tf.train.Example(features=tf.train.Features(feature={"text": feature})).SerializeToString()


def write_tfrecords(records, output_dir, name, files_per):
    """Write serialized records, `files_per` to a file; return the final file paths.

    Each file is written under a temporary name and renamed when complete, so a crash never
    leaves a partial file under a name the reader would take.
    """
    tf.io.gfile.makedirs(output_dir)
    written, batch = [], []

    def flush():
        final = os.path.join(output_dir, "%s_%d_%d.tfrecords" % (name, len(written), len(batch)))
        temp = final + ".incomplete"
        with tf.io.TFRecordWriter(temp) as writer:
            for record in batch:
                writer.write(record)
        tf.io.gfile.rename(temp, final, overwrite=True)
        written.append(final)
        batch.clear()

    for record in records:
        batch.append(record)
        if len(batch) == files_per:
            flush()
    if batch:
        flush()
    return written


def create_tfrecords(input_path, output_dir, tokenizer, name="data", chunk_size=2048, files_per=100000,
                     separator=None):
    """Tokenize every document under `input_path` into records of chunk_size + 1 tokens."""
    if separator is None:
        separator = tokenizer.token_to_id(END_OF_TEXT)
        if separator is None:
            raise TokenizerError("the tokenizer has no %s token; pass --separator ID" % END_OF_TEXT)
    documents = (text for path in input_files(input_path) for text in read_documents(path))
    token_lists = (encoding.ids + [separator] for encoding in _encode_in_batches(tokenizer, documents))
    records = (serialize(piece) for piece in chunks(token_lists, chunk_size + 1))
    written = write_tfrecords(records, output_dir, name, files_per)
    if not written:
        raise ValueError("%s holds fewer than chunk_size + 1 = %d tokens: no record written; use a smaller "
                         "--chunk_size or more text" % (input_path, chunk_size + 1))
    return written


def _encode_in_batches(tokenizer, documents, batch_size=256):
    batch = []
    for text in documents:
        batch.append(text)
        if len(batch) == batch_size:
            yield from tokenizer.encode_batch(batch)
            batch = []
    if batch:
        yield from tokenizer.encode_batch(batch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", required=True, help="directory, file or glob of *.jsonl.zst / *.jsonl / *.txt")
    p.add_argument("--output_dir", default="./tfrecords", help="local directory or gs://bucket/prefix")
    p.add_argument("--name", default="openwebtext", help="output file name prefix")
    p.add_argument("--encoder_path", default="gpt2",
                   help="tokenizers JSON file, directory with vocab.json + merges.txt, or \"gpt2\" (bundled)")
    p.add_argument("--chunk_size", type=int, default=2048, help="model context n_ctx; records hold chunk_size + 1 tokens")
    p.add_argument("--files_per", type=int, default=100000, help="records per output file")
    p.add_argument("--separator", type=int, default=None, help="token id appended to every document (default: <|endoftext|>)")
    args = p.parse_args(argv)
    if args.chunk_size < 1 or args.files_per < 1:
        p.error("--chunk_size and --files_per must be at least 1")
    try:
        tokenizer = load_tokenizer(args.encoder_path)
        files = create_tfrecords(args.input_dir, args.output_dir, tokenizer, args.name, args.chunk_size,
                                 args.files_per, args.separator)
    except (FileNotFoundError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 2
    print("wrote %d file(s) to %s" % (len(files), args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pile shards (*.jsonl.zst) and text -> the TFRecords main.py reads, locally or on gs://.

    gpt-neo-create-tfrecords --input /data/pile/train --output_dir gs://bucket/pile/train \\
        --name pile --tokenizer gpt2 --chunk_size 2048 --processes 8 \\
        --write_dataset_config configs/dataset_configs/pile.json

Modes:
  chunks     records of exactly chunk_size + 1 tokens cut from the stream of documents, each followed
             by the separator; a document's remainder carries into the next record (the original
             dropped every document shorter than a chunk except at file boundaries).
  documents  one record per document (its tokens + separator), for the stitching input modes.

Output: `<name>_<index>_<records>.tfrecords` (the count is what the sequential reader parses),
`files_per` records a file, and `<name>.manifest.json` listing every file with its records, tokens,
bytes and sha256, plus the inputs, tokenizer and arguments. Files are numbered in document
order (inputs in natural-sort order), so the output does not depend on --processes.

Resumable: a stopped run (Ctrl-C, kill -9, a bad input line), started again with the same
arguments, continues after the last complete file and ends with output byte-identical to an
uninterrupted run. Files appear under their final name only when complete. Two arguments may change
on resume, as the complete files stay what the new ones would write: --input after the input
file the last complete file ended in (a corrupt shard fixed or renamed, shards added), and
--skip_bad_lines while no line was skipped before that point. A run that completed no file leaves
nothing to resume: a rerun with other arguments starts over. Otherwise other arguments are refused;
--overwrite deletes this --name's files (nothing else) and starts over.

Ctrl-C stops at once (a file's rename and its manifest entry are never cut apart), keeps the
complete files, prints the command that resumes and exits with status 130 (the shell's for SIGINT).
"""
import sys

from . import add_tokenizer, parser, tokenizer_choice


def parse_args(argv=None):
    # No abbreviations: the resume command drops --overwrite by its full name.
    p = parser(__doc__, allow_abbrev=False)
    p.add_argument("--input", "--input_dir", dest="input", nargs="+", required=True, action="extend",
                   help="input files, directories or globs (*.jsonl.zst, *.jsonl, *.jsonl.gz, *.jsonl.xz, *.txt), "
                        "local or gs://")
    p.add_argument("--output_dir", default="./tfrecords", help="local directory or gs://bucket/prefix")
    p.add_argument("--name", default="openwebtext", help="output file name prefix, the original's")
    add_tokenizer(p, "gpt2", "tokenizers JSON file, directory with vocab.json + merges.txt or tokenizer.json, "
                             "or \"gpt2\" (the bundled GPT-2 BPE)")
    p.add_argument("--mode", choices=("chunks", "documents"), default="chunks",
                   help="records of chunk_size + 1 tokens, or one per document")
    p.add_argument("--chunk_size", type=int, default=2048,
                   help="model context n_ctx; records hold chunk_size + 1 tokens")
    p.add_argument("--files_per", type=int, default=100000, help="records per output file")
    p.add_argument("--minimum_size", type=int, default=1,
                   help="documents mode: skip documents with fewer tokens (separator included)")
    p.add_argument("--separator", type=int, default=None,
                   help="token id appended to every document (default: the tokenizer's <|endoftext|>)")
    p.add_argument("--processes", type=int, default=1, help="tokenizer processes (output does not depend on it)")
    p.add_argument("--pile_set_name", action="append", default=[],
                   help="keep only documents whose meta.pile_set_name is this (repeatable)")
    p.add_argument("--ftfy", action="store_true", help="fix text with ftfy (NFKC); off by default (the original: on)")
    p.add_argument("--wikitext-detokenize", dest="wikitext_detokenize", action="store_true",
                   help="undo WikiText tokenization spacing; off by default (the original: on for all data)")
    p.add_argument("--skip_bad_lines", action="store_true", help="skip and count undecodable lines instead of stopping")
    p.add_argument("--write_dataset_config", default=None,
                   help="write or update this dataset config JSON (e.g. configs/dataset_configs/mydata.json)")
    p.add_argument("--dataset_split", choices=("train", "eval"), default="train",
                   help="which glob of the dataset config these records are: path (train) or eval_path")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: first delete this --name's files in --output_dir (<name>.manifest.json, "
                        "<name>_<index>_<records>.tfrecords and their *.incomplete files; nothing else)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    tokenizer_choice(p, args)
    return args



def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    from ..tfrecords_tools import create_tfrecords  # the work, with TensorFlow
    return create_tfrecords.main(args, argv)


if __name__ == "__main__":
    sys.exit(main())

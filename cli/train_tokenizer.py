"""Train a byte-level BPE tokenizer on text or Pile shards, local or gs://, like the original's.

The model is the original's: NFKC normaliser, byte-level pre-tokenizer that adds a prefix
space, byte-level decoder, byte-level post-processor with trimmed offsets, and the special
tokens `<|endoftext|>` = id 0 and `<|padding|>` = id 1. A dataset config for data encoded
with it must therefore say

    "tokenizer_path": "<output_dir>/byte-level-bpe.tokenizer.json",
    "tokenizer_is_pretrained": false, "eos_id": 0, "padding_id": 1

(the original's example dataset config says eos 1 / pad 0, the opposite [Q-27]).

Unlike the original, every document is used (not an unseeded random 20 % of the files, which
left nothing to train on with fewer than 5 files), documents are streamed rather than copied to
.txt files, the same inputs give a byte-identical tokenizer file, all 256 bytes are in the
vocabulary whether or not the corpus has them, and the output directory is never deleted: an
existing tokenizer file is an error unless --overwrite, which replaces just that file.

    gpt-neo-train-tokenizer --input data/sample/train.jsonl.zst \\
        --output_dir build/sample/tokenizer --vocab_size 1000
"""
import sys

from . import parser


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--input", "--input_dir", dest="input", required=True, nargs="+", action="extend",
                   help="files, directories or globs (local or gs://) of *.jsonl.zst, *.jsonl, *.jsonl.gz, "
                        "*.jsonl.xz or *.txt (one document per file); --input_dir as in create_tfrecords")
    p.add_argument("--output_dir", required=True,
                   help="local directory or gs://bucket/prefix; the tokenizer is written to "
                        "<output_dir>/byte-level-bpe.tokenizer.json")
    p.add_argument("--vocab_size", required=True, type=int,
                   help="tokens in the vocabulary, special tokens included (at least 258: every byte and 2 special "
                        "tokens)")
    p.add_argument("--min_frequency", type=int, default=2, help="least count of a pair to be merged")
    p.add_argument("--pile_set_name", action="append", default=[],
                   help="train only on jsonl documents whose meta.pile_set_name is this (repeatable)")
    p.add_argument("--ftfy", action="store_true", help="fix mojibake and NFKC-normalise with ftfy first")
    p.add_argument("--skip_bad_lines", action="store_true",
                   help="skip (and count) undecodable lines instead of stopping")
    p.add_argument("--max_documents", type=int, default=None, help="train on at most this many documents")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing tokenizer file in --output_dir (only that file)")
    args = p.parse_args(argv)
    return args


def main(argv=None):
    args = parse_args(argv)
    from ..tfrecords_tools import train_tokenizer  # the work, with TensorFlow
    return train_tokenizer.main(args)


if __name__ == "__main__":
    sys.exit(main())

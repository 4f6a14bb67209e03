"""Inspect TFRecords before a run spends TPU hours on them.

    gpt-neo-check-dataset "gs://bucket/pile/train/*.tfrecords" --n_vocab 50257 --n_ctx 2048
    gpt-neo --model configs/my_model.json --check_dataset            # the config's train and eval data

Reads every record (framing and CRCs checked, so a corrupt or truncated file is named with the
byte offset of the damage), counts records and tokens, checks token ids against n_vocab (the
original silently embedded ids >= n_vocab as zeros), record lengths against n_ctx + 1, the
record counts in the file names (the sequential reader trusts them), and the sha256 of every
file a manifest (`*.manifest.json` beside the files) lists. Prints decoded sample text.

Records are examples of n_ctx + 1 tokens or more, except for generic_text's documents_fixed and
documents_random modes (`--stitch`), where a record is a document and an example joins `stitch`
of them: there short records are fine as long as any `stitch` of them hold n_ctx + 1 tokens.
"""
import sys

from . import add_tokenizer, parser, tokenizer_choice


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("paths", nargs="+", help="TFRecord files or globs, local or gs://")
    p.add_argument("--n_vocab", type=int, default=None, help="the model's n_vocab: ids must be below it")
    p.add_argument("--n_ctx", type=int, default=None, help="the model's n_ctx: records need n_ctx + 1 tokens")
    p.add_argument("--stitch", type=int, default=None,
                   help="records are documents that generic_text's documents_* modes join this many at a time: "
                        "any `stitch` of them need n_ctx + 1 tokens, not each one")
    add_tokenizer(p, None, "tokenizer to decode a sample with (path or \"gpt2\")")
    p.add_argument("--processes", type=int, default=1, help="files read at once (the Pile takes hours on one)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.stitch is not None and args.stitch < 1:
        p.error("--stitch must be at least 1")
    if args.processes < 1:
        p.error("--processes must be at least 1")
    tokenizer_choice(p, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    from ..tfrecords_tools import check_dataset  # the work, with TensorFlow
    return check_dataset.main(args)


if __name__ == "__main__":
    sys.exit(main())

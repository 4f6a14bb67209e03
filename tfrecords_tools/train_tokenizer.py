"""Train a byte-level BPE tokenizer on text or Pile shards, local or gs://, like the original's: the work
of `gpt-neo-train-tokenizer`, whose usage (cli/train_tokenizer.py) describes the model and the output.
"""
import itertools
import json
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ..errors import UserError, first_line
from ..inputs.tokenizer import END_OF_TEXT, PADDING
from ..meshtf import tf
from .sources import InputError, SkipCounts, TextOptions, document_stream, input_files

TOKENIZER_FILE = "byte-level-bpe.tokenizer.json"  # the original's name
SPECIAL_TOKENS = (END_OF_TEXT, PADDING)             # ids 0 and 1, in this order
EOS_ID, PADDING_ID = 0, 1
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)          # every byte plus the specials


class TrainingError(UserError):
    """An argument out of range, or a tokenizer file already there without --overwrite."""


def new_tokenizer():
    """The untrained byte-level BPE pipeline of the original."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=True)
    return tokenizer


def check_sizes(vocab_size, min_frequency):
    if vocab_size < MIN_VOCAB_SIZE:
        raise TrainingError("--vocab_size must be at least %d (256 bytes + %d special tokens), got %d"
                            % (MIN_VOCAB_SIZE, len(SPECIAL_TOKENS), vocab_size))
    if min_frequency < 1:
        raise TrainingError("--min_frequency must be at least 1, got %d" % min_frequency)


def train_tokenizer(texts, vocab_size, min_frequency=2, show_progress=False):
    """A byte-level BPE tokenizer of at most `vocab_size` tokens trained on the strings `texts`.

    `texts` is consumed once, as it comes, so it can be a generator over a corpus of any size.
    The vocabulary is smaller than asked when the corpus has too few pairs seen
    `min_frequency` times.
    """
    check_sizes(vocab_size, min_frequency)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=show_progress)
    tokenizer = new_tokenizer()
    tokenizer.train_from_iterator(texts, trainer)
    assert [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS] == [EOS_ID, PADDING_ID]
    return tokenizer


@dataclass
class DocumentCount:
    documents: int = 0


def corpus_texts(inputs, options=TextOptions(), max_documents=None, skipped=None, counted=None):
    """Texts of the documents under `inputs` (files, directories, globs), at most `max_documents`.

    The files are listed before the first text is asked for, so missing inputs fail at once;
    `counted` (a DocumentCount) counts the documents yielded.
    """
    stream = document_stream(input_files(inputs), options, skipped)
    counted = counted if counted is not None else DocumentCount()

    def texts():
        for _position, text in itertools.islice(stream, max_documents):
            counted.documents += 1
            yield text

    return texts()


def tokenizer_path(output_dir):
    return os.path.join(output_dir, TOKENIZER_FILE)


def check_output(output_dir, overwrite=False):
    """Raise a TrainingError if the tokenizer file exists and may not be replaced."""
    path = tokenizer_path(output_dir)
    if not overwrite and tf.io.gfile.exists(path):
        raise TrainingError("%s already exists; pass --overwrite to replace it (nothing else in %s is "
                            "touched)" % (path, output_dir))
    return path


def save_tokenizer(tokenizer, output_dir, overwrite=False):
    """Write `<output_dir>/byte-level-bpe.tokenizer.json` (local or gs://); return its path.

    The file is written under a unique temporary name next to it and then renamed, so a reader
    sees the old file or the complete new one, never a partial one; nothing else in
    `output_dir` is touched.
    """
    final = check_output(output_dir, overwrite)
    tf.io.gfile.makedirs(output_dir)
    temp = "%s.incomplete-%s" % (final, uuid.uuid4().hex)
    with tempfile.TemporaryDirectory() as local_dir:
        # tokenizers writes only to local files: save there, then copy with TF's file API.
        local = os.path.join(local_dir, TOKENIZER_FILE)
        tokenizer.save(local, pretty=True)
        tf.io.gfile.copy(local, temp)
    try:
        check_output(output_dir, overwrite)  # it may have appeared while we trained
        tf.io.gfile.rename(temp, final, overwrite=overwrite)
    finally:
        if tf.io.gfile.exists(temp):
            tf.io.gfile.remove(temp)
    return final


def dataset_config_entries(path, vocab_size):
    """The dataset-config keys for data encoded with the tokenizer at `path` (add `path`, `eval_path`)."""
    return {"n_vocab": vocab_size, "tokenizer_path": path, "tokenizer_is_pretrained": False,
            "eos_id": EOS_ID, "padding_id": PADDING_ID}


def main(args):
    """Run the parsed command line (cli/train_tokenizer.py); the exit status."""
    options = TextOptions(pile_set_names=tuple(args.pile_set_name), ftfy=args.ftfy,
                          skip_bad_lines=args.skip_bad_lines)
    skipped, counted = SkipCounts(), DocumentCount()
    try:
        options.check()
        if args.max_documents is not None and args.max_documents < 1:
            raise TrainingError("--max_documents must be at least 1, got %d" % args.max_documents)
        check_sizes(args.vocab_size, args.min_frequency)
        check_output(args.output_dir, args.overwrite)
        texts = corpus_texts(args.input, options, args.max_documents, skipped, counted)
        tokenizer = train_tokenizer(texts, args.vocab_size, args.min_frequency, show_progress=sys.stderr.isatty())
        if not counted.documents:
            raise InputError("no documents to train on (%d filtered out by --pile_set_name, %d empty, %d bad "
                             "lines skipped)" % (skipped.filtered, skipped.empty, skipped.bad_lines))
        path = save_tokenizer(tokenizer, args.output_dir, args.overwrite)
    except (UserError, tf.errors.OpError) as e:
        print("error: %s" % first_line(e), file=sys.stderr)
        return 2
    vocab_size = tokenizer.get_vocab_size()
    print("trained on %d documents (%d filtered out, %d empty, %d bad lines skipped)"
          % (counted.documents, skipped.filtered, skipped.empty, skipped.bad_lines))
    if vocab_size < args.vocab_size:
        print("note: the corpus gave only %d tokens (asked for %d): too few pairs occur --min_frequency %d times"
              % (vocab_size, args.vocab_size, args.min_frequency))
    print("wrote %s (vocab size %d)" % (path, vocab_size))
    print("dataset config entries for data encoded with it (eos_id 0 and padding_id 1, not the original "
          "example's 1 and 0), next to `path` and `eval_path`:")
    print(json.dumps(dataset_config_entries(path, vocab_size), indent=2))
    return 0

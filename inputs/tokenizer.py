"""Tokenizers from local paths or gs://: a `tokenizers` JSON file, GPT-2 BPE files, or "gpt2".

No machine of ours reaches the HuggingFace hub, so the pretrained name "gpt2" (what the
original's Pile dataset configs use) resolves to the GPT-2 files bundled in inputs/assets/gpt2.
"""
import os
import tempfile

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from ..errors import UserError
from ..meshtf import tf

BUNDLED_GPT2 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "gpt2")
END_OF_TEXT = "<|endoftext|>"
# The original adds this to pretrained GPT-2 tokenizers; it becomes id 50257.
PADDING = "<|padding|>"


class TokenizerError(UserError):
    """The tokenizer named by a dataset config cannot be loaded."""


def _read(path):
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def _bpe_from_vocab_and_merges(directory):
    # tokenizers reads vocab/merges only from local files: stage gs:// copies in a temp dir.
    with tempfile.TemporaryDirectory() as tmp:
        local = {}
        for name in ("vocab.json", "merges.txt"):
            local[name] = os.path.join(tmp, name)
            with open(local[name], "wb") as f:
                f.write(_read(os.path.join(directory, name)))
        tokenizer = Tokenizer(models.BPE.from_file(local["vocab.json"], local["merges.txt"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([END_OF_TEXT])
    return tokenizer


def tokenizer_source(path):
    """Where the tokenizer at `path` (a JSON file, a directory or "gpt2") is read from: ("json", file)
    or ("bpe", directory holding GPT-2 style vocab.json + merges.txt)."""
    if not path:
        raise TokenizerError("the dataset config has no `tokenizer_path`")
    directory = BUNDLED_GPT2 if path == "gpt2" else path
    if tf.io.gfile.isdir(directory):
        if tf.io.gfile.exists(os.path.join(directory, "tokenizer.json")):
            return "json", os.path.join(directory, "tokenizer.json")
        if tf.io.gfile.exists(os.path.join(directory, "vocab.json")):
            return "bpe", directory
        raise TokenizerError("tokenizer directory %s holds neither tokenizer.json nor vocab.json + merges.txt"
                             % directory)
    if tf.io.gfile.exists(path):
        return "json", path
    raise TokenizerError("tokenizer_path %s does not exist (give a tokenizers JSON file, a directory with "
                         "vocab.json + merges.txt, or \"gpt2\")" % path)


def load_tokenizer(path, pretrained=False):
    """A `tokenizers.Tokenizer` from a JSON file, a directory or "gpt2".

    A directory holds `tokenizer.json` or GPT-2 style `vocab.json` + `merges.txt`. With
    `pretrained` (the dataset config's `tokenizer_is_pretrained`), `<|padding|>` is added as the
    original does for GPT-2.
    """
    try:
        kind, source = tokenizer_source(path)
        if kind == "bpe":
            tokenizer = _bpe_from_vocab_and_merges(source)
        else:
            tokenizer = Tokenizer.from_str(_read(source).decode())
    except TokenizerError:
        raise
    except Exception as e:  # tokenizers reports malformed files as plain Exceptions
        raise TokenizerError("cannot load tokenizer %s: %s" % (path, e)) from None
    if pretrained:
        tokenizer.add_special_tokens([PADDING])
    return tokenizer


def gpt2_bpe_files(path):
    """{name: bytes} of the vocab.json and merges.txt the tokenizer at `path` is built from (those
    GPT-2's slow tokenizer reads), or {} for a tokenizer read from a JSON file."""
    kind, source = tokenizer_source(path)
    if kind != "bpe":
        return {}
    return {name: _read(os.path.join(source, name)) for name in ("vocab.json", "merges.txt")}


def tokenizer_for(data_config):
    """The tokenizer of the first dataset config, as in the original."""
    first = data_config.dataset_configs[0]
    return load_tokenizer(first.tokenizer_path, first.tokenizer_is_pretrained)

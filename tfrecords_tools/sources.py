"""Input documents for the data tools: files, directories and globs, local or gs://, streamed.

Formats: `*.jsonl.zst` (the Pile), `*.jsonl`, `*.jsonl.gz`, `*.jsonl.xz` (lines
`{"text": ..., "meta": {"pile_set_name": ...}}`; a `text` list is joined by blank lines) and
`*.txt` (one document per file). Files are read in natural-sort order and documents in file
order, so every tool sees the same document sequence.
"""
import dataclasses
import gzip
import importlib.util
import io
import json
import lzma
import os
import re
from dataclasses import dataclass
from typing import Tuple

import zstandard

from ..errors import UserError
from ..meshtf import tf
from ..storage import natural_sort_key

FORMATS = (".jsonl.zst", ".jsonl.gz", ".jsonl.xz", ".jsonl", ".txt")


class InputError(UserError):
    """A problem with the input files, worded for the user (file and line)."""


@dataclass(frozen=True)
class TextOptions:
    """What is done to every document before tokenizing."""

    pile_set_names: Tuple[str, ...] = ()  # keep only these `meta.pile_set_name`s (jsonl); empty = all
    ftfy: bool = False                    # fix mojibake and normalise (NFKC) with ftfy
    wikitext_detokenize: bool = False     # undo WikiText's tokenization artefacts
    skip_bad_lines: bool = False          # skip (and count) undecodable lines instead of stopping

    def check(self):
        """Raise InputError for options this installation cannot apply (before any document is read)."""
        if self.ftfy and importlib.util.find_spec("ftfy") is None:
            raise InputError("--ftfy needs the ftfy package: pip install ftfy (or the package's [ftfy] extra)")


def input_files(inputs):
    """Files named by `inputs` (paths, directories or globs): directories are scanned for FORMATS."""
    files = []
    for item in inputs:
        if tf.io.gfile.isdir(item):
            found = [os.path.join(item, p.rstrip("/")) for p in tf.io.gfile.listdir(item)]
            matched = [p for p in found if p.endswith(FORMATS) and not tf.io.gfile.isdir(p)]
        else:
            matched = [p for p in tf.io.gfile.glob(item) if not tf.io.gfile.isdir(p)]
        if not matched:
            raise InputError("no input files at %s (expected files ending in %s)" % (item, ", ".join(FORMATS)))
        unknown = [p for p in matched if not p.endswith(FORMATS)]
        if unknown:
            raise InputError("%s is not a supported input (files must end in %s)" % (unknown[0], ", ".join(FORMATS)))
        files += matched
    return sorted(dict.fromkeys(files), key=natural_sort_key)


def _lines(path, raw):
    """Decoded lines of a (compressed) JSON-lines file, streamed."""
    if path.endswith(".zst"):
        stream = _ZstdFrames(raw)
    elif path.endswith(".gz"):
        stream = gzip.GzipFile(fileobj=raw)
    elif path.endswith(".xz"):
        stream = lzma.LZMAFile(raw)
    else:
        stream = raw
    return io.BufferedReader(_Readable(stream), buffer_size=1 << 20)


class _ZstdFrames:
    """Decompresses concatenated zstd frames; a frame cut short raises ZstdError.

    (zstandard's stream_reader ends quietly at truncated input, which would lose the rest of a
    shard without a word.)
    """

    def __init__(self, raw):
        self._raw = raw
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._fed = False
        self._buffer = b""

    def _decompress(self, data):
        out = self._frame.decompress(data)
        self._fed = self._fed or bool(data)
        while self._frame.eof:
            unused = self._frame.unused_data
            self._frame = zstandard.ZstdDecompressor().decompressobj()
            self._fed = bool(unused)
            if not unused:
                break
            out += self._frame.decompress(unused)
        return out

    def read(self, size):
        while len(self._buffer) < size:
            data = self._raw.read(1 << 20)
            if not data:
                if self._fed:
                    raise zstandard.ZstdError("the last zstd frame is truncated")
                break
            self._buffer += self._decompress(data)
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


class _Readable(io.RawIOBase):
    """Adapts any object with read(n) (a GFile, a decompressor) to io.RawIOBase for line reading."""

    def __init__(self, stream):
        self._stream = stream

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self._stream.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


@dataclass
class SkipCounts:
    bad_lines: int = 0
    filtered: int = 0
    empty: int = 0


@dataclass
class BytesRead:
    """How far a `document_stream` has read its input files, in stored (compressed) bytes: for a progress
    bar with a total and an ETA."""
    done: int = 0
    total: int = 0


def read_documents(path, options=TextOptions(), skipped=None, start=0, on_read=None):
    """Yield (document index, text) of one file, from document `start` on.

    The index counts every document of the file (also filtered and empty ones), so a resumed
    run can skip exactly the documents an earlier run consumed. `on_read(n)` is told the bytes of the
    file read so far after each document.
    """
    skipped = skipped if skipped is not None else SkipCounts()
    with tf.io.gfile.GFile(path, "rb") as raw:
        if path.endswith(".txt"):
            documents = [(1, raw.read())]
        else:
            documents = enumerate(_lines(path, raw), 1)
        index = -1
        try:
            for number, line in documents:
                if not path.endswith(".txt") and not line.strip():
                    continue
                index += 1
                if index < start:
                    continue
                text = _document_text(path, number, line, options, skipped)
                if text is None:
                    continue
                if not text.strip():
                    skipped.empty += 1
                    continue
                if on_read:
                    on_read(raw.tell())
                yield index, clean(text, options)
        except (zstandard.ZstdError, EOFError, lzma.LZMAError, gzip.BadGzipFile) as e:
            raise InputError("%s is corrupt or truncated after document %d (%s)" % (path, index + 1, e)) from None


def _document_text(path, number, line, options, skipped):
    try:
        if path.endswith(".txt"):
            return line.decode("utf-8")
        record = json.loads(line.decode("utf-8"))
        text = record["text"]
        if isinstance(text, list) and all(isinstance(t, str) for t in text):
            text = "\n\n".join(text)
        if not isinstance(text, str):
            raise ValueError("`text` is not a string")
        text.encode("utf-8")  # a lone surrogate (valid JSON, e.g. "\\ud83d") is not text
    except (UnicodeDecodeError, UnicodeEncodeError):
        return _bad(path, number, "is not valid UTF-8", options, skipped)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return _bad(path, number, 'is not a JSON object with a "text" string (or list of strings)',
                    options, skipped)
    if options.pile_set_names:
        meta = record.get("meta") if isinstance(record, dict) else None
        name = meta.get("pile_set_name") if isinstance(meta, dict) else None
        if name not in options.pile_set_names:
            skipped.filtered += 1
            return None
    return text


def _bad(path, number, problem, options, skipped):
    where = path if path.endswith(".txt") else "%s line %d" % (path, number)
    if not options.skip_bad_lines:
        raise InputError("%s %s (pass --skip_bad_lines to skip such lines)" % (where, problem))
    skipped.bad_lines += 1
    return None


def clean(text, options):
    if options.ftfy:
        import ftfy  # only needed with --ftfy
        text = ftfy.fix_text(text, normalization="NFKC")
    if options.wikitext_detokenize:
        text = wikitext_detokenize(text)
    return text


_WIKITEXT_RULES = (
    (r" @(.)@ ", r"\1"),            # number separators: 1 @,@ 000 -> 1,000
    (r" ([:;.!?,])", r"\1"),        # no space before punctuation
    (r"\( ", "("), (r" \)", ")"),
    (r"\[ ", "["), (r" \]", "]"),
    (r"\{ ", "{"), (r" \}", "}"),
    (r"\" ([^\"]*?) \"", r'"\1"'),  # quotes hug their text
    (r"= = = = (.*?) = = = =", r"==== \1 ===="),
    (r"= = = (.*?) = = =", r"=== \1 ==="),
    (r"= = (.*?) = =", r"== \1 =="),
    (r" \n", "\n"), (r"\n ", "\n"),
    (r" ° ", "° "),
    (r" 's\b", "'s"), (r"s ' ", "s' "),
    (r" n't\b", "n't"), (r" 'll\b", "'ll"), (r" 're\b", "'re"), (r" 've\b", "'ve"), (r" 'm\b", "'m"),
    (r" 'd\b", "'d"),
)


def wikitext_detokenize(text):
    """Undo WikiText-103's tokenization spacing (the original's rules, without its no-op one).

    The original also rewrote " N " to " 1 " in every document, which corrupts ordinary text;
    that rule is left out.
    """
    for pattern, replacement in _WIKITEXT_RULES:
        text = re.sub(pattern, replacement, text)
    return text


def document_stream(files, options=TextOptions(), skipped=None, start=(0, 0), read=None):
    """Yield ((file index, document index, skip counts so far), text) over all files from `start`.

    The skip counts (bad lines, filtered, empty) are a snapshot taken as the document is read,
    so a consumer that is behind the reader still knows the counts at its own position. `read` (a
    BytesRead) follows the input bytes read; its total is known on return, before the first document.
    """
    skipped = skipped if skipped is not None else SkipCounts()
    sizes = [tf.io.gfile.stat(path).length for path in files] if read is not None else None
    if read is not None:
        read.total, read.done = sum(sizes), sum(sizes[:start[0]])
    return _documents(files, options, skipped, start, read, sizes)


def _documents(files, options, skipped, start, read, sizes):
    first_file, first_doc = start
    for file_index in range(first_file, len(files)):
        begin = first_doc if file_index == first_file else 0
        on_read = None
        if read is not None:
            def on_read(n, before=sum(sizes[:file_index])):
                read.done = before + n
        for doc_index, text in read_documents(files[file_index], options, skipped, begin, on_read):
            yield (file_index, doc_index, dataclasses.astuple(skipped)), text


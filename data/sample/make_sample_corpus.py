#!/usr/bin/env python3
"""Build the small sample corpus in data/sample/ (Pile format).

Output files (written next to this script unless --out-dir is given):
  train.jsonl.zst, val.jsonl.zst
Each is a zstandard-compressed file of JSON lines, one document per line:
  {"meta": {"pile_set_name": "..."}, "text": "..."}

Sources (both ship with CPython and are under the PSF License Version 2,
see README.md):
  * "PythonDocs":       pydoc_data.topics.topics, one document per topic.
  * "PythonDocstrings": docstrings of a fixed list of pure-Python standard
                        library modules, one document per module.

The output is deterministic for a given interpreter build and zstandard
version: every iteration order is sorted, JSON keys are sorted, the
compression level is fixed, compression is single-threaded, and nothing
time- or machine-dependent (timestamps, object addresses) is written.
The bytes recorded in README.md were produced with CPython 3.11.7 on Linux
and the `zstandard` package; another Python version has different docs and
docstrings and therefore gives different (but equally valid) files.

Usage:
  /work/venv/bin/python data/sample/make_sample_corpus.py [--out-dir DIR]
Requires only the standard library and `zstandard`.
"""

import argparse
import importlib
import inspect
import json
import os
import sys

import zstandard

EXPECTED_PYTHON = (3, 11, 7)
ZSTD_LEVEL = 19     # fixed so output bytes never depend on library defaults
VAL_EVERY = 20      # every 20th document of each source (sorted) goes to val

# Standard-library modules whose docstrings are added as extra text.
# Chosen to be pure Python with good docstrings, and excluding modules whose
# source carries a third-party copyright header (e.g. logging, tarfile,
# subprocess, re, textwrap, ipaddress, ast, abc, numbers), so that everything
# here is plainly PSF-licensed. Also excludes modules with import side effects.
DOCSTRING_MODULES = sorted([
    "argparse", "base64", "bisect", "calendar", "collections",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "difflib",
    "enum", "fnmatch", "fractions", "functools", "getopt", "gettext", "glob",
    "heapq", "hmac", "imaplib", "inspect", "json", "json.decoder",
    "json.encoder", "operator", "os", "pathlib", "pickle", "pprint", "queue",
    "random", "sched", "secrets", "shlex", "shutil", "statistics", "string",
    "tempfile", "threading", "timeit", "tokenize", "traceback", "typing",
    "unittest.case", "urllib.parse", "uuid", "warnings", "weakref", "zipfile",
])


def clean(doc):
    """Normalise a raw __doc__ string (dedent, strip) or return ''."""
    if not isinstance(doc, str):
        return ""
    return inspect.cleandoc(doc).strip()


def public_names(mod):
    """Public names of a module, sorted: __all__ if present, else no '_' prefix."""
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n in vars(mod) if not n.startswith("_")]
    return sorted(set(names))


def module_document(modname):
    """One text document: the module docstring plus the own docstrings of the
    public functions/classes (and their methods) defined in that module.

    Only the object's *own* __doc__ is used (not inspect.getdoc, which would
    copy inherited docstrings into many places), and only objects whose
    __module__ is this module (or its C accelerator), so re-exports are not
    duplicated.
    Signatures are deliberately omitted: default-value reprs can contain
    memory addresses, which would break byte-for-byte reproducibility.
    """
    mod = importlib.import_module(modname)
    # C accelerator modules (e.g. heapq -> _heapq) are part of the same stdlib
    # module, so their functions/classes count as defined "here" too.
    home = {modname, "_" + modname.rsplit(".", 1)[-1]}
    parts = []
    doc = clean(mod.__doc__)
    parts.append(f"Module {modname}\n\n{doc}" if doc else f"Module {modname}")
    for name in public_names(mod):
        obj = getattr(mod, name, None)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) not in home:
            continue
        kind = "class" if inspect.isclass(obj) else "function"
        doc = clean(obj.__doc__)
        if doc:
            parts.append(f"{kind} {modname}.{name}\n\n{doc}")
        if inspect.isclass(obj):
            for attr in sorted(vars(obj)):
                member = vars(obj)[attr]
                # staticmethod/classmethod wrap the function in __func__
                member = getattr(member, "__func__", member)
                # Public methods/properties, plus a Python-level __init__ (a C
                # slot wrapper's __init__ doc is generic boilerplate).
                if attr == "__init__":
                    if not inspect.isfunction(member):
                        continue
                elif attr.startswith("_"):
                    continue
                if not (inspect.isroutine(member) or isinstance(member, property)):
                    continue
                mdoc = clean(member.__doc__)
                if mdoc:
                    parts.append(f"method {modname}.{name}.{attr}\n\n{mdoc}")
    return "\n\n\n".join(parts) + "\n"


def build_documents():
    """Return (train_docs, val_docs) as lists of (pile_set_name, text)."""
    from pydoc_data.topics import topics

    train, val = [], []
    seen = set()

    def split(items, set_name):
        # Drop empty texts and exact duplicates (e.g. topics "else" and "if"
        # share one text; the first key in sorted order is kept).
        unique = []
        for key, text in sorted(items):
            if text.strip() and text not in seen:
                seen.add(text)
                unique.append(text)
        # Fixed split: every VAL_EVERY-th document (index 0, 20, 40, ...) goes
        # to val. Index-0-based so even short sources contribute to val.
        for i, text in enumerate(unique):
            (val if i % VAL_EVERY == 0 else train).append((set_name, text))

    split(((k, v.strip() + "\n") for k, v in topics.items()), "PythonDocs")
    split(((m, module_document(m)) for m in DOCSTRING_MODULES), "PythonDocstrings")
    return train, val


def write_jsonl_zst(path, docs):
    """Write docs as zstd-compressed JSON lines; return (n_docs, n_chars, n_bytes_raw)."""
    lines = []
    for set_name, text in docs:
        record = {"text": text, "meta": {"pile_set_name": set_name}}
        lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True))
    raw = ("\n".join(lines) + "\n").encode("utf-8")
    # One-shot compress(): single-threaded, content size written in the frame
    # header, no checksum/dictionary options that could vary -> stable bytes.
    data = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(docs), sum(len(t) for _, t in docs), len(raw)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=here)
    args = parser.parse_args()

    if sys.version_info[:3] != EXPECTED_PYTHON:
        print(f"warning: running on Python {sys.version.split()[0]}, README "
              f"hashes were made with {'.'.join(map(str, EXPECTED_PYTHON))}; "
              "output will differ", file=sys.stderr)

    train, val = build_documents()
    os.makedirs(args.out_dir, exist_ok=True)
    for name, docs in (("train", train), ("val", val)):
        path = os.path.join(args.out_dir, f"{name}.jsonl.zst")
        n, chars, raw = write_jsonl_zst(path, docs)
        by_set = {}
        for s, _ in docs:
            by_set[s] = by_set.get(s, 0) + 1
        print(f"{path}: {n} docs {by_set}, {chars} chars, "
              f"{raw} bytes uncompressed, {os.path.getsize(path)} bytes compressed")


if __name__ == "__main__":
    main()

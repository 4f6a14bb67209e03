"""Every shell command block of README.md and docs/*.md runs as written, so the documented commands are
the tested ones.

A ```bash block runs unless the line before its fence is `<!-- not run by tests: REASON -->` (a TPU, a
GPU, the network). The blocks of one file run in order with `bash -e` in a fresh copy of the repository
(the files git knows), where `python` is this interpreter and the Makefile's sample TFRecords
(build/sample/train, build/sample/val) exist. `gs://your-bucket` stands for a bucket on the local GCS
emulator; nothing else is substituted.
"""
import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, SAMPLE

from gpt_neo_mtf.cli import create_tfrecords

DOCS = [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
NOT_RUN = re.compile(r"^<!-- not run by tests: (.*\S) -->$")
BUCKET = "gs://your-bucket"


def bash_blocks(path):
    """[(line number, commands, reason it is not run or None)] of the ```bash blocks of a Markdown file."""
    with open(path) as f:
        lines = f.read().split("\n")
    blocks, start = [], None
    for number, line in enumerate(lines):
        if start is None and line.strip() == "```bash":
            start = number
        elif start is not None and line.strip() == "```":
            skip = NOT_RUN.match(lines[start - 1].strip()) if start else None
            blocks.append((start + 1, "\n".join(lines[start + 1:number]), skip.group(1) if skip else None))
            start = None
    return blocks


def runnable(path):
    return [block for block in bash_blocks(path) if block[2] is None]


def relative(path):
    return os.path.relpath(path, REPO)


@pytest.fixture(scope="module")
def sample_records(tmp_path_factory):
    """build/sample/{train,val} as `make demo` makes them (the Makefile's create_tfrecords arguments)."""
    root = str(tmp_path_factory.mktemp("doc_sample"))
    for split, source in (("train", "train"), ("val", "val")):
        assert create_tfrecords.main(["--input", os.path.join(SAMPLE, source + ".jsonl.zst"), "--output_dir",
                                      os.path.join(root, split), "--name", "sample", "--chunk_size", "128",
                                      "--files_per", "500", "--quiet"]) == 0
    return root


def scratch_copy(target):
    """The repository's files (tracked, or new and not ignored) copied to `target`."""
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        if os.path.exists(os.path.join(REPO, name)):
            os.makedirs(os.path.dirname(os.path.join(target, name)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), os.path.join(target, name))


def test_every_bash_block_runs_or_says_why():
    blocks = {relative(path): bash_blocks(path) for path in DOCS}
    assert sum(len(b) for b in blocks.values()) >= 10, blocks
    assert any(runnable(path) for path in DOCS)
    for path, found in blocks.items():
        for number, text, reason in found:
            assert text.strip(), "%s:%d: an empty bash block" % (path, number)


@pytest.mark.parametrize("path", [path for path in DOCS if runnable(path)], ids=relative)
def test_documented_commands_run(path, sample_records, tmp_path, request):
    scratch = str(tmp_path / "repo")
    scratch_copy(scratch)
    shutil.copytree(sample_records, os.path.join(scratch, "build", "sample"))
    bucket = None
    if any(BUCKET in text for _, text, _ in runnable(path)):
        bucket = request.getfixturevalue("gcs_bucket") + "/" + tmp_path.name
    # The interpreter's own directory first: `python` is this (virtual environment's) interpreter.
    env = dict(os.environ, PATH="%s:%s" % (os.path.dirname(sys.executable), os.environ["PATH"]),
               TF_CPP_MIN_LOG_LEVEL="2")
    for number, text, _ in runnable(path):
        commands = text.replace(BUCKET, bucket) if bucket else text
        done = subprocess.run(["bash", "-e", "-c", commands], cwd=scratch, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, "%s:%d exited %d:\n%s\n--- stdout\n%s\n--- stderr\n%s" % (
            relative(path), number, done.returncode, text, done.stdout[-3000:], done.stderr[-3000:])
        assert "Traceback" not in done.stderr, "%s:%d:\n%s" % (relative(path), number, done.stderr[-3000:])

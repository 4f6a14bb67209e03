"""Files, local or on gs://, through TensorFlow's file API: JSON read and written whole, files that
appear only complete, a probe for a directory the run will write to, and the names of TFRecord files.

Every folder of the project reads and writes its files through these; nothing here imports the
project but meshtf and errors.
"""
import json
import os
import re

from .errors import ConfigError, first_line
from .meshtf import tf

# The record count a TFRecord file name carries, by the original's rule: underscore, digits, one
# character, "tfrecords", end of name (`<name>_<index>_<count>.tfrecords` as tfrecords_name writes).
_COUNT_IN_NAME = re.compile(r"_(\d+).tfrecords$")


def is_remote(path):
    """Whether `path` is in an object store (gs://...), which has no directories to rename."""
    return "://" in path


def absolute(path):
    """A local path made absolute, so a file that records it works from any directory; remote paths as they are."""
    return path if is_remote(path) else os.path.abspath(path)


def read_json(path, what):
    """The JSON object in the file `path`; `what` names the file in errors ("model config")."""
    if not tf.io.gfile.exists(path):
        raise ConfigError("%s %s does not exist" % (what, path))
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError("%s %s is not valid JSON: %s (line %d, column %d)"
                          % (what, path, e.msg, e.lineno, e.colno)) from None
    if not isinstance(value, dict):
        raise ConfigError("%s %s must hold a JSON object, not %s" % (what, path, type(value).__name__))
    return value


def write_atomically(path, data):
    """Write the bytes `data` to `<path>.incomplete`, then rename: readers never see a partial file under `path`."""
    temp = path + ".incomplete"
    with tf.io.gfile.GFile(temp, "wb") as f:
        f.write(data)
    tf.io.gfile.rename(temp, path, overwrite=True)


def write_json(path, value):
    """`value` as indented JSON with sorted keys (the same bytes for the same value), written atomically."""
    write_atomically(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


def write_problem(directory):
    """Why files cannot be written in `directory` (created when missing), or None when they can.

    A probe file is written and removed, so a missing bucket, a read-only disk or a path through a
    file shows up before a run does its work rather than when it saves it.
    """
    probe = directory.rstrip("/") + "/.write_test"
    try:
        tf.io.gfile.makedirs(directory)
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("ok")
        tf.io.gfile.remove(probe)
    except tf.errors.OpError as e:
        bucket = "gs://%s" % directory[len("gs://"):].split("/")[0] if directory.startswith("gs://") else None
        if bucket and not tf.io.gfile.isdir(bucket + "/"):  # GCS's own message for it is cryptic
            return "bucket %s does not exist (or these credentials cannot see it)" % bucket
        return first_line(e)
    return None


def natural_sort_key(path):
    """Digit runs compare as numbers, other text case-insensitively ("f_2" < "f_10"): the order
    files are read in."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path)]


# ---------------------------------------------------------------------------------------------
# TFRecord file names: `<name>_<index>_<count>.tfrecords`, the count being the records the file holds


def tfrecords_name(name, index, count):
    return "%s_%d_%d.tfrecords" % (name, index, count)


def tfrecords_glob(directory, name):
    """The glob of the TFRecord files of `name` in `directory` (what a dataset config's `path` holds)."""
    return "%s/%s_*.tfrecords" % (directory.rstrip("/"), name)


def count_in_name(path):
    """The record count a file name carries (`..._<count>.tfrecords`), or None."""
    match = _COUNT_IN_NAME.search(path)
    return int(match.group(1)) if match else None

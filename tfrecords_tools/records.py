"""TFRecord files written atomically, with their sha256.

Records are framed here (length, masked CRC32C of the length, data, masked CRC32C of the data;
TensorFlow's TFRecord format) so the bytes can be hashed while they are written, locally or
on gs://, without reading the file back.
"""
import hashlib
import struct

import google_crc32c

from ..meshtf import tf

_CRC_MASK_DELTA = 0xA282EAD8


def masked_crc(data):
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def frame(data):
    """One TFRecord: uint64 length, masked crc of it, the data, masked crc of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def example(tokens):
    """A tf.train.Example with the int64 list feature `text` (what GPT-Neo's readers parse)."""
    feature = tf.train.Feature(int64_list=tf.train.Int64List(value=tokens))
    return tf.train.Example(features=tf.train.Features(feature={"text": feature})).SerializeToString()


class RecordWriter:
    """Streams framed records to `<temp path>`; `finish` renames the file to its final name.

    The final name carries the record count, known only at the end, and a partial file never
    appears under a final name. Memory stays flat whatever the file size.
    """

    def __init__(self, temp_path):
        self._temp = temp_path
        self._file = tf.io.gfile.GFile(temp_path, "wb")
        self._sha = hashlib.sha256()
        self.records = self.tokens = self.bytes = 0

    def add(self, tokens):
        data = frame(example(tokens))
        self._file.write(data)
        self._sha.update(data)
        self.records += 1
        self.tokens += len(tokens)
        self.bytes += len(data)

    def finish(self, path):
        self._file.close()
        tf.io.gfile.rename(self._temp, path, overwrite=True)
        return {"name": path.rsplit("/", 1)[-1], "records": self.records, "tokens": self.tokens,
                "bytes": self.bytes, "sha256": self._sha.hexdigest()}

    def discard(self):
        """Close and delete the temporary file (also after `finish`, when there is none). Closed
        first: on gs:// an object appears only when its file is closed."""
        self._file.close()
        if tf.io.gfile.exists(self._temp):
            tf.io.gfile.remove(self._temp)

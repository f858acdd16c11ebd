"""The official FFHQ / CelebA-HQ TFRecords (progressive_growing_of_gans layout), read at random.

Each record is a tf.train.Example {'shape': [3], 'data': CHW bytes}; the record offsets come from
the files' own length headers, so any record is one seek away. Parsing needs TensorFlow (an
optional extra); nothing else does.
"""

from __future__ import annotations

import glob
import os
import struct

import numpy as np

from score_jax.errors import DatasetNotPreparedError, InvalidInputError, MissingDependencyError


class TFRecordSource:
    """Random access to the official FFHQ / CelebA-HQ TFRecords {'shape': [3], 'data': CHW bytes}."""

    def __init__(self, pattern: str):
        try:
            import tensorflow as tf  # parses tf.train.Example protos
        except ImportError as e:
            raise MissingDependencyError(
                "Reading the FFHQ / CelebA-HQ TFRecords needs TensorFlow, an optional extra of "
                "score_jax that is not installed: run `pip install tensorflow-cpu` (or "
                "`pip install tensorflow`). No other data set needs it.") from e
        self._example = tf.train.Example
        self._files = sorted(glob.glob(pattern))
        if not self._files:
            raise DatasetNotPreparedError(
                f"No TFRecords file matches tfrecords_path {pattern!r}. Make one with the "
                f"progressive_growing_of_gans dataset_tool.py (create_celebahq or "
                f"create_from_images) "
                f"and pass its path, e.g. .../ffhq-r10.tfrecords for 1024 x 1024.")
        self._offsets = [(f, o, n, k) for f in self._files
                         for k, (o, n) in enumerate(record_offsets(f))]

    def __len__(self) -> int:
        return len(self._offsets)

    def locate(self, i: int) -> tuple[str, int]:
        """(file, position in it) of record i."""
        return self._offsets[i][0], self._offsets[i][3]

    def __getitem__(self, i: int) -> dict:
        path, offset, length, _ = self._offsets[i]
        with open(path, "rb") as f:
            f.seek(offset)
            proto = self._example.FromString(f.read(length))
        feature = proto.features.feature
        shape = list(feature["shape"].int64_list.value)
        data = np.frombuffer(feature["data"].bytes_list.value[0], np.uint8).reshape(shape)
        return {"image": data.transpose(1, 2, 0), "label": 0}


def record_offsets(path: str) -> list[tuple[int, int]]:
    """(payload offset, length) of each record of a TFRecord file, read from its length headers."""
    out, offset, size = [], 0, os.path.getsize(path)
    with open(path, "rb") as f:
        while offset < size:
            f.seek(offset)
            (length,) = struct.unpack("<Q", f.read(8))  # then a 4-byte CRC of the length
            out.append((offset + 12, length))
            offset += 12 + length + 4  # payload and its 4-byte CRC
    if offset != size:
        raise InvalidInputError(f"{path!r} is not a complete TFRecord file (size {size}, parsed "
                                f"{offset}).")
    return out

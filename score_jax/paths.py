"""The one path layer: every workdir file, local or in a bucket (`gs://...`), through etils.epath.

etils.epath is what orbax and tfds use already; for `gs://` it goes through tf.io.gfile when
tensorflow is importable, else through fsspec's gcsfs (honouring STORAGE_EMULATOR_HOST). A bucket
has no atomic rename and no append, so the writers here never rely on either: `write_bytes`
writes a whole object, which appears complete or not at all (locally a temporary file renamed over
the target gives the same guarantee), and `save_npz` builds the archive in memory first.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Mapping

import numpy as np
from etils import epath

Path = epath.Path


def is_remote(path: str | os.PathLike) -> bool:
    """Whether `path` names an object store (a URI such as gs://bucket/dir), not a local file."""
    return "://" in os.fspath(path)


def resolve(path: str | os.PathLike) -> epath.Path:
    """`path` as an epath.Path: local paths absolute with ~ expanded, URIs unchanged."""
    if is_remote(path):
        return epath.Path(os.fspath(path))
    return epath.Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def make_dir(path: str | os.PathLike) -> epath.Path:
    """Create directory `path` with its parents if missing; on a bucket nothing (it has no folders).

    gcsfs's makedirs would create a missing *bucket*, which a run must never do.
    """
    path = resolve(path)
    if not is_remote(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` as the whole content of `path`; a reader sees the old or the new file, never half.

    The directory must exist (on a bucket there is none to create).
    """
    path = resolve(path)
    if is_remote(path):
        path.write_bytes(data)  # one object upload: atomic on GCS
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except BaseException:
        # A full disk leaves no half-written temporary behind either.
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def npz_bytes(arrays: Mapping[str, np.ndarray], *, compressed: bool = False) -> bytes:
    """The bytes of an .npz archive of `arrays` (numeric arrays; no pickles)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(
        buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray], *,
             compressed: bool = False) -> None:
    """Write `arrays` {name: array} as one .npz at `path`, whole (see write_bytes)."""
    write_bytes(path, npz_bytes(arrays, compressed=compressed))

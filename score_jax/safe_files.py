"""Reading files a user names, which may come from a stranger: no code runs, damage is one line.

Every reader of a user-given path (weights, checkpoints, statistics, sample inputs and masks) goes
through this module:
- pickles are read by `RestrictedUnpickler`, which admits only the globals a format needs (the way
  torch's `weights_only=True` does) and refuses every other one before anything is called;
- `.npz` files are parsed member by member with `allow_pickle=False`, each array's header checked
  against the bytes actually stored (a damaged header cannot ask for gigabytes);
- images are decoded by PIL with its decompression-bomb limit kept;
- `reading(path, what)` turns whatever a damaged file raises inside a parser (EOFError, struct.error,
  zipfile.BadZipFile, a KeyError from a missing record, ...) into one `DamagedFileError` naming the
  file, so `main.py` prints one line and exits 2 instead of a stack trace.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
import zipfile
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np

from score_jax import paths
from score_jax.errors import InvalidInputError, MissingFileError, UserError

# Numeric array kinds: bool, signed, unsigned, float, complex. Object ('O') arrays hold pickles.
NUMERIC_KINDS = "biufc"


class DamagedFileError(InvalidInputError):
    """A file a user named is truncated, corrupt or not of the expected format."""


class UnsafeFileError(InvalidInputError):
    """A file a user named asks for code to run (a pickled global the format never needs)."""


@contextlib.contextmanager
def reading(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Context in which any parser failure becomes one DamagedFileError naming `what` at `path`.

    UserErrors (a refusal already worded) pass through unchanged. MemoryError and RecursionError
    count as damage too: a well-formed file of the expected kind raises neither.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever a parser raises on hostile bytes
        reason = str(err).splitlines()[0][:200] if str(err) else ""
        raise DamagedFileError(
            f"{what} {os.fspath(path)!r} cannot be read: {type(err).__name__}"
            f"{': ' + reason if reason else ''}. The file is truncated, damaged or not of this "
            f"kind.") from None


def require_file(path: str | os.PathLike, what: str) -> str:
    """`path` (local or gs://) as a string; MissingFileError naming `what` unless it is a file."""
    path = os.fspath(path)
    if not paths.resolve(path).is_file():
        raise MissingFileError(f"{what} {path!r} does not exist (or is not a file).")
    return path


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in `allowed` {(module, name): object}.

    Any other global (os.system, builtins.exec, subprocess.Popen, ...) raises UnsafeFileError
    before it is imported, so no code from the file runs. Persistent ids are refused unless a
    subclass handles them.
    """

    def __init__(self, file: BinaryIO, allowed: Mapping[tuple[str, str], Any], *, path: str,
                 what: str):
        super().__init__(file)
        self._allowed, self._path, self._what = allowed, path, what

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise UnsafeFileError(
            f"{self._what} {self._path!r} refers to the Python global {module}.{name}, which this "
            f"format never needs; refusing to unpickle it (unpickling it would run code from the "
            f"file).")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeFileError(f"{self._what} {self._path!r} holds a persistent reference, which "
                              f"this format never needs; refusing to unpickle it.")


def latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes, admitting only latin-1.

    Any other codec name would make the codec registry import a module the file chose.
    """
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise DamagedFileError(f"a pickled bytes object uses encoding {encoding!r}, not latin-1")
    return text.encode("latin1")


# Protocol-2 pickles (torch's legacy files, Python 2 era ports) spell bytes this way.
BYTES_GLOBALS = {("_codecs", "encode"): latin1_bytes}


def check_numeric_tree(tree: Any, path: str, what: str) -> None:
    """Raise DamagedFileError unless `tree` is nested dicts (str keys) of numeric numpy arrays."""
    stack = [("", tree)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, Mapping):
            for key, child in node.items():
                if not isinstance(key, str):
                    raise DamagedFileError(f"{what} {path!r} has a non-string key {key!r} at "
                                           f"{where or 'the top'}.")
                stack.append((f"{where}/{key}", child))
        elif not (isinstance(node, (np.ndarray, np.generic)) and node.dtype.kind in NUMERIC_KINDS):
            raise DamagedFileError(f"{what} {path!r} holds a {type(node).__name__} at {where}, not "
                                   f"a numeric array.")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """The numeric array stored in one .npy member, its size checked against its header."""
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = header(f, max_header_size=10000)
        if dtype.kind not in NUMERIC_KINDS or dtype.hasobject:
            raise UnsafeFileError(f"array {info.filename!r} has dtype {dtype}, not a numeric one "
                                  f"(object arrays are pickles)")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count < 0 or count * dtype.itemsize != info.file_size - f.tell():
            raise DamagedFileError(f"array {info.filename!r}: its header says {shape} {dtype}, but "
                                   f"{info.file_size - f.tell()} bytes of data are stored")
        data = f.read(count * dtype.itemsize)
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def load_npz(path: str | os.PathLike, what: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file {name: numeric array}, read without unpickling anything.

    Raises:
      MissingFileError: no file at `path`.
      UnsafeFileError: an array is an object (pickle) array.
      DamagedFileError: the file is not a readable .npz (message names the file and the problem).
    """
    path = require_file(path, what)
    with reading(path, what):
        try:
            with paths.resolve(path).open("rb") as f, zipfile.ZipFile(f) as archive:
                out = {}
                for info in archive.infolist():
                    name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                    try:
                        out[name] = _read_member(archive, info)
                    except UnsafeFileError as err:
                        raise UnsafeFileError(f"{what} {path!r}: {err}; refusing to read it.") from None
                return out
        except DamagedFileError as err:
            raise DamagedFileError(f"{what} {path!r} cannot be read: {err}.") from None


def open_image(path: str | os.PathLike, what: str) -> np.ndarray:
    """The pixels of an image file as uint8 [H, W] or [H, W, C] (PIL decodes; nothing else runs)."""
    from PIL import Image

    path = require_file(path, what)
    with reading(path, what), warnings.catch_warnings():
        # Images far larger than any data set's are refused rather than decoded (PIL's bomb check).
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with paths.resolve(path).open("rb") as f, Image.open(f) as image:
            image.load()
            if image.mode not in ("L", "RGB", "RGBA", "LA", "P", "1"):
                raise DamagedFileError(f"{what} {path!r} has PIL mode {image.mode}; expected 8-bit "
                                       f"grayscale or colour.")
            if image.mode in ("P", "1"):
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            return np.asarray(image, dtype=np.uint8)


def read_msgpack(path: str | os.PathLike, what: str) -> Any:
    """The tree stored in a flax msgpack checkpoint (arrays from flax's ext types; no pickle)."""
    from flax import serialization

    path = require_file(path, what)
    data = paths.resolve(path).read_bytes()
    try:
        return serialization.msgpack_restore(data)
    except Exception as err:  # noqa: BLE001 - whatever msgpack or numpy raise on hostile bytes
        raise DamagedFileError(
            f"{what} {path!r} is not a valid msgpack checkpoint ({len(data)} bytes; "
            f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); the "
            f"file may be truncated or not a flax checkpoint.") from None

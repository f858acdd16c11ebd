"""Weights fetched once into a cache and checked by SHA-256, as pytorch-fid and clean-fid do.

The cache is `$SCORE_JAX_CACHE`, else `~/.cache/score_jax`. A download streams into a temporary
name in the cache (hashing as it goes) and is renamed only once its SHA-256 matches, so a killed
or corrupted download never leaves a file that looks complete. A cached copy is hashed again
before each use: a file damaged or replaced on disk is fetched anew.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import urllib.error
import urllib.request

from score_jax.errors import InvalidInputError, MissingFileError

_CHUNK = 1 << 20


class DownloadError(MissingFileError):
    """The file could not be downloaded (offline, server down, HTTP error)."""


def cache_dir() -> pathlib.Path:
    """$SCORE_JAX_CACHE, else ~/.cache/score_jax."""
    return pathlib.Path(os.environ.get("SCORE_JAX_CACHE") or "~/.cache/score_jax").expanduser()


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _download(url: str, tmp: pathlib.Path, name: str, timeout: float, progress: bool) -> str:
    """Stream url into tmp with a progress bar; returns the SHA-256 of what arrived."""
    from tqdm import tqdm

    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}",
                  disable=not progress, mininterval=0.5) as bar:
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                h.update(block)
                bar.update(len(block))
    return h.hexdigest()


def fetch(url: str, sha256: str, name: str, *, directory: pathlib.Path | None = None,
          timeout: float = 60.0, progress: bool = True) -> pathlib.Path:
    """The cached file `name`, downloaded from `url` first if absent or not of hash `sha256`.

    Raises:
      DownloadError: the download failed (the message gives the URL and the reason).
      InvalidInputError: what arrived does not have the expected SHA-256 (it was deleted).
    """
    directory = cache_dir() if directory is None else pathlib.Path(directory)
    path = directory / name
    if path.is_file():
        if sha256_of(path) == sha256:
            return path
        path.unlink()  # damaged or replaced since it was cached: fetch it again
    directory.mkdir(parents=True, exist_ok=True)
    # One temporary name per process: the processes of a job may share a cache (an NFS home).
    tmp = directory / f".{name}.{os.getpid()}.part"
    try:
        got = _download(url, tmp, name, timeout, progress)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"downloading {url} into {directory} failed ({reason}).") from None
    if got != sha256:
        tmp.unlink()
        raise InvalidInputError(f"the file downloaded from {url} has SHA-256 {got}, not the expected "
                                f"{sha256}; it was deleted. The server sent something else (a proxy "
                                f"page, a truncated or altered file): check the URL and retry.")
    os.replace(tmp, path)
    return path

"""The run's working directory: created and checked once, never emptied.

Layout (every mode writes under it): `checkpoints/` (orbax), `tensorboard/`, `samples/iter_<step>/`,
`<eval_folder>/` (evaluation results), `<sample_folder>/` (the `sample` mode).
It may be local or in a bucket (`gs://bucket/run`): every access goes through score_jax.paths.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from typing import Callable, Iterator, Optional

import jax

from score_jax import parallel, paths
from score_jax.errors import InvalidInputError, MissingFileError, NotWritableError


def resolve(workdir: str | os.PathLike) -> paths.Path:
    """The workdir as an absolute path (~ expanded) or a bucket URI; no file-system access."""
    return paths.resolve(workdir)


def prepare(workdir: str | os.PathLike,
            barrier: Callable[[str], None] = parallel.sync) -> paths.Path:
    """Create the workdir if needed and check it is writable (process 0); never removes anything.

    `barrier(name)` makes the other processes wait for process 0 (a coordination barrier in the
    modes that use no XLA collectives).
    """
    path = resolve(workdir)
    if path.is_file():
        raise InvalidInputError(f"--workdir: {path} exists and is not a directory; choose another "
                                f"path.")
    # A bucket has no directories to check: the write probe below finds a missing bucket.
    if not paths.is_remote(path) and not path.parent.is_dir():
        raise MissingFileError(f"--workdir: the parent directory {path.parent} does not exist; "
                               f"create it first or choose another workdir.")
    if jax.process_index() == 0:
        try:
            if not paths.is_remote(path):
                path.mkdir(exist_ok=True)
            probe = path / f".write_probe_{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:  # EACCES, EPERM, EROFS, a missing bucket: "cannot write here"
            why = e.strerror or (  # gcsfs words a missing bucket as the upload URL it tried
                "the bucket does not exist" if isinstance(e, FileNotFoundError)
                else f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
            raise NotWritableError(f"--workdir: {path} is not writable ({why}); choose a "
                                   f"directory or bucket you can write to.") from None
    barrier("workdir")
    return path


def role_name(kind: str, folder: str) -> str:
    """The lock role of a mode writing `folder` of the workdir, e.g. ('eval', 'eval') -> 'eval-eval'."""
    return f"{kind}-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in folder)


def require_checkpoints(workdir: str | os.PathLike) -> paths.Path:
    """The workdir of a training run; raises unless it holds a checkpoints/ directory."""
    path = resolve(workdir)
    if not (path / "checkpoints").is_dir():
        raise MissingFileError(f"--workdir: {path} holds no checkpoints/ directory; train first "
                               f"(--mode train) or pass the workdir of a training run.")
    return path


# errnos that mean "this disk cannot take the write", not a bug: full, over quota, read-only, denied.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
# The same failures as worded by libraries that do not raise OSError (tensorstore's status text).
_WRITE_TEXT = re.compile(r"No space left on device|Read-only file system|Permission denied|"
                         r"Disk quota exceeded|File too large")


def write_failure(error: BaseException) -> Optional[str]:
    """Why a write failed ("No space left on device", ...) if `error` or its causes say so."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _WRITE_ERRNOS:
            return os.strerror(error.errno)
        match = _WRITE_TEXT.search(str(error))
        if match:
            return match.group(0)
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def stop_on_write_failure(path: paths.Path, done: Callable[[], str]) -> Iterator[None]:
    """Turn a full, read-only or forbidden disk under `path` into one NotWritableError.

    `done()` says what the workdir still holds (e.g. the newest complete checkpoint); it is called
    only after the failure, so the message reports the state actually left on disk.
    """
    try:
        yield
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        raise NotWritableError(f"writing to {path} failed ({reason}); {done()} Free space or "
                               f"restore write access, then rerun the same command to resume.") from e

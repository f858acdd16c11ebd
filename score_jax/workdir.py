"""The run's working directory: created and checked once, never emptied.

Layout (every mode writes under it): `checkpoints/` (orbax), `tensorboard/`, `samples/iter_<step>/`,
`<eval_folder>/` (evaluation results), `<sample_folder>/` (the `sample` mode).
"""

from __future__ import annotations

import os
import pathlib
from typing import Callable

import jax

from score_jax import parallel
from score_jax.errors import InvalidInputError, MissingFileError, NotWritableError


def resolve(workdir: str | os.PathLike) -> pathlib.Path:
    """The workdir as an absolute path (~ expanded); no file-system access."""
    return pathlib.Path(workdir).expanduser().absolute()


def prepare(workdir: str | os.PathLike,
            barrier: Callable[[str], None] = parallel.sync) -> pathlib.Path:
    """Create the workdir if needed and check it is writable (process 0); never removes anything.

    `barrier(name)` makes the other processes wait for process 0 (a coordination barrier in the
    modes that use no XLA collectives).
    """
    path = resolve(workdir)
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"--workdir: {path} exists and is not a directory; choose another "
                                f"path.")
    if not path.parent.is_dir():
        raise MissingFileError(f"--workdir: the parent directory {path.parent} does not exist; "
                               f"create it first or choose another workdir.")
    if jax.process_index() == 0:
        try:
            path.mkdir(exist_ok=True)
            probe = path / f".write_probe_{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:  # EACCES, EPERM, EROFS: all mean "cannot write here"
            raise NotWritableError(f"--workdir: {path} is not writable ({e.strerror}); choose a "
                                   f"directory you can write to.") from None
    barrier("workdir")
    return path


def require_checkpoints(workdir: str | os.PathLike) -> pathlib.Path:
    """The workdir of a training run; raises unless it holds a checkpoints/ directory."""
    path = resolve(workdir)
    if not (path / "checkpoints").is_dir():
        raise MissingFileError(f"--workdir: {path} holds no checkpoints/ directory; train first "
                               f"(--mode train) or pass the workdir of a training run.")
    return path

"""What a person watches: messages, tqdm progress bars (rate and ETA) and TensorBoard scalars.

Only the main process reports; elsewhere every call is a no-op, so the loops need no `if`.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import time
from typing import Mapping, Optional

import numpy as np

from score_jax import paths


class Progress:
    """A progress bar with rate and ETA on stderr (tqdm), or nothing when disabled."""

    def __init__(self, total: int, *, desc: str, unit: str, initial: int = 0,
                 enabled: bool = True):
        self._bar = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                             dynamic_ncols=True, file=sys.stderr, mininterval=1.0, smoothing=0.1)

    def update(self, n: int = 1, postfix: Optional[Mapping[str, float]] = None) -> None:
        """Advance by `n`, showing `postfix` (e.g. the loss) beside the bar."""
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: f"{float(v):.4g}" for k, v in postfix.items()},
                                  refresh=False)
        self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _EventFile:
    """TensorBoard scalars written and flushed in the caller's thread, as whole files.

    tensorboardX's SummaryWriter writes from a background thread, so a full or read-only disk
    surfaced there as a thread's trace and again in an atexit hook; written here, the OSError
    reaches the training loop, which stops with one line. A bucket has no append, so each flush
    rewrites the current file whole (score_jax.paths.write_bytes); past `roll_bytes` the next
    events go to a new file, which keeps a rewrite small. TensorBoard reads the files of a folder in
    name order, one after another.
    """

    def __init__(self, logdir: str | os.PathLike, roll_bytes: int = 1 << 20):
        from tensorboardX.proto import event_pb2  # only a main process needs tensorboardX

        self._dir = paths.make_dir(logdir)
        self._prefix = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
        self._roll_bytes, self._part, self._records = roll_bytes, 0, bytearray()
        self._records += self._frame(event_pb2.Event(wall_time=time.time(),
                                                     file_version="brain.Event:2"))
        self._flush()  # a workdir that cannot take the file fails here, before any training

    @staticmethod
    def _frame(event) -> bytes:
        from tensorboardX.record_writer import masked_crc32c

        # TFRecord framing: length, its masked CRC32C, the data, the data's masked CRC32C.
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        return (header + struct.pack("<I", masked_crc32c(header))
                + data + struct.pack("<I", masked_crc32c(data)))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        from tensorboardX import summary
        from tensorboardX.proto import event_pb2

        for name, value in values.items():
            self._records += self._frame(event_pb2.Event(
                wall_time=time.time(), step=int(step), summary=summary.scalar(name, value)))
        self._flush()

    def _flush(self) -> None:
        paths.write_bytes(self._dir / f"{self._prefix}.{self._part:04d}", bytes(self._records))
        if len(self._records) >= self._roll_bytes:
            self._part, self._records = self._part + 1, bytearray()


class Reporter:
    """Messages, progress bars and (with a `logdir`) TensorBoard; `enabled=False`: all no-ops."""

    def __init__(self, logdir: Optional[str | os.PathLike] = None, *, enabled: bool = True):
        self.enabled = enabled
        self._writer = None
        self._last_step, self._last_time = 0, time.perf_counter()
        if enabled and logdir is not None:
            self._writer = _EventFile(logdir)

    def progress(self, total: int, *, desc: str, unit: str, initial: int = 0) -> Progress:
        """A progress bar for `total` units of work (a no-op bar when disabled)."""
        return Progress(total, desc=desc, unit=unit, initial=initial, enabled=self.enabled)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Write scalars to TensorBoard at `step`."""
        if self._writer is None:
            return
        self._writer.scalars(step, {name: float(np.asarray(v)) for name, v in values.items()})

    def start_rate(self, step: int) -> None:
        """Start the wall clock of `steps_per_second` at `step`."""
        self._last_step, self._last_time = step, time.perf_counter()

    def steps_per_second(self, step: int) -> float:
        """Steps per second since the previous call (wall clock)."""
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        return rate

    def message(self, text: str) -> None:
        """Print a line on stdout (the run's log) without breaking a progress bar on stderr."""
        if not self.enabled:
            return
        from tqdm import tqdm
        tqdm.write(text, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        """Stop writing TensorBoard scalars (each `scalars` call already wrote its file whole)."""
        self._writer = None

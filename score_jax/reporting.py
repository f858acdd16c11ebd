"""Training reports: TensorBoard scalars (tensorboardX) and a tqdm progress bar with rate and ETA.

Only the main process reports; elsewhere every call is a no-op, so the loops need no `if`.
"""

from __future__ import annotations

import pathlib
import sys
import time
from typing import Mapping, Optional

import numpy as np


class Reporter:
    """TensorBoard writer plus progress bar; `enabled=False` makes every method a no-op."""

    def __init__(self, logdir: str | pathlib.Path, *, total: int, initial: int = 0,
                 enabled: bool = True, desc: str = "train", bar: bool = True):
        self.enabled = enabled
        self._writer = None
        self._bar = None
        self._last_step, self._last_time = initial, time.perf_counter()
        if not enabled:
            return
        from tensorboardX import SummaryWriter  # imported here: a non-main process never needs it
        self._writer = SummaryWriter(str(logdir))
        if bar:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step",
                             dynamic_ncols=True, file=sys.stderr, mininterval=1.0,
                             smoothing=0.1)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Write scalars to TensorBoard at `step`."""
        if self._writer is None:
            return
        for name, value in values.items():
            self._writer.add_scalar(name, float(np.asarray(value)), step)

    def steps_per_second(self, step: int) -> float:
        """Steps per second since the previous call (wall clock)."""
        now = time.perf_counter()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        return rate

    def advance(self, n: int, postfix: Optional[Mapping[str, float]] = None) -> None:
        """Move the progress bar on by `n` steps, showing `postfix` (e.g. the loss)."""
        if self._bar is None:
            return
        if postfix:
            self._bar.set_postfix({k: f"{float(v):.4g}" for k, v in postfix.items()},
                                  refresh=False)
        self._bar.update(n)

    def message(self, text: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Flush and close the writer and the bar."""
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()

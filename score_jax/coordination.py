"""Failure-aware synchronisation of the processes of a multi-host job.

XLA collectives and orbax barriers wait minutes for a process that died, then abort with a C++
trace. The runtime modes synchronise through this module instead, over the key-value store of the
`jax.distributed` coordination service: every process publishes a heartbeat (a counter bumped by a
background thread) and, when it fails, its error. Whoever waits polls both, so when one process
raises or is killed, the others stop within seconds with a line that names it. With a single
process every call is immediate.

Small arrays (per-example losses, bits/dim, metric values) travel through the store too (`gather`);
large ones (samples, features) are written by each process to the shared workdir.
"""

from __future__ import annotations

import io
import threading
import time
from typing import Optional, Sequence

import jax
import numpy as np

from score_jax.errors import UserError

_PREFIX = "score_jax"
_HEARTBEAT_S = 0.5


class PeerFailedError(UserError, RuntimeError):
    """Another process of the job failed or stopped answering; this one stops too."""


def _client():
    from jax._src import distributed  # the coordination-service client orbax uses as well
    return distributed.global_state.client


class Coordinator:
    """Barriers, gathers and failure notices across the processes of one job."""

    def __init__(self, *, dead_after_s: float = 10.0, poll_s: float = 0.05):
        self.index, self.count = jax.process_index(), jax.process_count()
        self.dead_after_s, self.poll_s = dead_after_s, poll_s
        self._client = _client() if self.count > 1 else None
        self._stop = threading.Event()
        self._seen: dict[int, tuple[str, float]] = {}
        self._rounds: dict[str, int] = {}
        if self._client is not None:
            threading.Thread(target=self._beat, daemon=True, name="score_jax-heartbeat").start()

    # ------------------------------------------------------------------ public

    def barrier(self, name: str) -> None:
        """Wait until every process reached `name`; raises PeerFailedError if one failed or died."""
        if self._client is None:
            return
        key = self._key(name)
        self._client.key_value_set(f"{key}/{self.index}", "1")
        self._wait([f"{key}/{p}" for p in range(self.count)], name)

    def gather(self, name: str, array: np.ndarray) -> list[np.ndarray]:
        """Every process's `array` (small: it travels through the coordination service), in order."""
        if self._client is None:
            return [np.asarray(array)]
        key = self._key(name)
        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        self._client.key_value_set_bytes(f"{key}/{self.index}", buf.getvalue())
        values = self._wait([f"{key}/{p}" for p in range(self.count)], name, as_bytes=True)
        return [np.load(io.BytesIO(v), allow_pickle=False) for v in values]

    def fail(self, error: BaseException | str) -> None:
        """Tell the other processes that this one failed (with one line of why)."""
        if self._client is None:
            return
        text = str(error).splitlines()[0][:500] if str(error) else type(error).__name__
        try:
            self._client.key_value_set(f"{_PREFIX}/failed/{self.index}", text,
                                       allow_overwrite=True)
        except Exception:  # noqa: BLE001 - the coordinator may be gone already; nothing to tell
            pass

    def close(self) -> None:
        """Stop the heartbeat."""
        self._stop.set()

    # ------------------------------------------------------------------ internals

    def _key(self, name: str) -> str:
        # A name used twice (e.g. one barrier per checkpoint) gets a fresh key each time.
        n = self._rounds.get(name, 0)
        self._rounds[name] = n + 1
        return f"{_PREFIX}/sync/{name}/{n}"

    def _beat(self) -> None:
        count = 0
        while not self._stop.wait(_HEARTBEAT_S):
            count += 1
            try:
                self._client.key_value_set(f"{_PREFIX}/alive/{self.index}", str(count),
                                           allow_overwrite=True)
            except Exception:  # noqa: BLE001 - coordinator gone: the waiting side reports it
                return

    def _check_peers(self, stage: str) -> None:
        """Raise if a process published a failure or its heartbeat stopped."""
        failed = self._client.key_value_dir_get(f"{_PREFIX}/failed/")
        if failed:
            key, text = sorted(failed)[0]
            who = key.rsplit("/", 1)[-1]
            raise PeerFailedError(f"process {who} of {self.count} failed ({text}); process "
                                  f"{self.index} stops too (at {stage}).")
        now = time.monotonic()
        beats = dict(self._client.key_value_dir_get(f"{_PREFIX}/alive/"))
        for p in range(self.count):
            if p == self.index:
                continue
            value = beats.get(f"{_PREFIX}/alive/{p}", "")
            last = self._seen.get(p)
            if last is None or last[0] != value:
                self._seen[p] = (value, now)
            elif now - last[1] > self.dead_after_s:
                raise PeerFailedError(
                    f"process {p} of {self.count} stopped answering (no heartbeat for "
                    f"{now - last[1]:.0f} s: killed or hung); process {self.index} stops too "
                    f"(at {stage}).")

    def _wait(self, keys: Sequence[str], stage: str, as_bytes: bool = False) -> list:
        get = self._client.key_value_try_get_bytes if as_bytes else self._client.key_value_try_get
        values: list[Optional[object]] = [None] * len(keys)
        while True:
            try:
                self._check_peers(stage)
                for i, key in enumerate(keys):
                    if values[i] is None:
                        try:
                            values[i] = get(key)
                        except Exception as e:  # noqa: BLE001 - NOT_FOUND: not there yet
                            if "NOT_FOUND" not in str(e) and "not found" not in str(e).lower():
                                raise
            except PeerFailedError:
                raise
            except Exception as e:  # noqa: BLE001 - the coordination service itself is gone
                raise PeerFailedError(
                    f"lost the coordination service (process 0, the coordinator, probably "
                    f"died: {str(e).splitlines()[0][:200]}); process {self.index} stops too (at "
                    f"{stage}).") from None
            if all(v is not None for v in values):
                return values
            time.sleep(self.poll_s)

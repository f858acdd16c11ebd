"""One writer per workdir role: a lease file with a heartbeat, not `flock` (buckets have none).

A job that writes a part of the workdir (training: `checkpoints/`; evaluation: its eval folder;
...) holds `<workdir>/.locks/<role>.json` while it runs. Process 0 of a job writes it; the other
processes of a multi-host job do nothing, so one job counts once. The file names the job (host,
pid, mode, command, start time) and carries a heartbeat that a background thread refreshes every
`beat_s` seconds. A second job finds it and refuses with one line naming the first, while the lock
is live:
  - on the same host, while its pid is alive (the pid and the process's start time must match, so a
    reused pid does not count), so a crashed job's lock is taken over at once;
  - from another host, while its heartbeat is younger than `lease_s` (the lock of a job that died
    there expires after that).
Taking a lock writes it, waits `settle_s` and reads it back: of two jobs that start together the
one whose write landed last wins and the other refuses. This needs only read-after-write
consistency, which local disks and GCS give.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Iterator, Optional

import jax

from score_jax import paths
from score_jax.errors import UserError

LEASE_S = 60.0
BEAT_S = 10.0
SETTLE_S = 0.2


class WorkdirBusyError(UserError, RuntimeError):
    """Another live job is writing the same part of the workdir."""


def _start_time(pid: int) -> Optional[str]:
    """The kernel's start time of process `pid` (field 22 of /proc/<pid>/stat); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: Optional[str]) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return start is None or _start_time(pid) in (None, start)


def _read(path: paths.Path) -> Optional[dict]:
    """The lock's content; None if there is none or it is not a lock (a torn or foreign file)."""
    try:
        value = json.loads(path.read_text())
    except (FileNotFoundError, ValueError, OSError):
        return None
    return value if isinstance(value, dict) and "job" in value else None


def _live(lock: dict, host: str, lease_s: float) -> bool:
    """Whether the job that wrote `lock` is still running, as seen from `host`."""
    if lock.get("host") == host and isinstance(lock.get("pid"), int):
        return _pid_alive(lock["pid"], lock.get("pid_start"))
    return time.time() - float(lock.get("heartbeat", 0)) < lease_s


def _describe(lock: dict) -> str:
    age = time.time() - float(lock.get("heartbeat", 0))
    return (f"job {lock.get('mode', '?')} started {lock.get('started', '?')} on host "
            f"{lock.get('host', '?')} (pid {lock.get('pid', '?')}, {lock.get('processes', 1)} "
            f"process(es), heartbeat {age:.0f} s ago; command: {lock.get('command', '?')})")


def _write(path: paths.Path, lock: dict) -> None:
    paths.write_bytes(path, json.dumps(lock).encode())


class _Heartbeat(threading.Thread):
    def __init__(self, path: paths.Path, lock: dict, beat_s: float):
        super().__init__(daemon=True, name="score_jax-workdir-lock")
        self.path, self.lock, self.beat_s = path, lock, beat_s
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.beat_s):
            current = _read(self.path)
            if current is not None and current["job"] != self.lock["job"]:
                return  # taken over (this job looked dead); the other job owns it now
            self.lock["heartbeat"] = time.time()
            # A full disk, or a bucket refusing the write (gcsfs raises its own HttpError, not an
            # OSError): the job itself reports that.
            try:
                _write(self.path, self.lock)
            except Exception:  # noqa: BLE001
                return


@contextlib.contextmanager
def claim(workdir: os.PathLike | str, role: str, *, mode: str, lease_s: float = LEASE_S,
          beat_s: float = BEAT_S, settle_s: float = SETTLE_S,
          report=print) -> Iterator[None]:
    """Hold the workdir's `role` lock for the body (process 0); WorkdirBusyError if a live job has it.

    `report(text)` is told when a dead job's lock is taken over.
    """
    if jax.process_index() != 0:
        yield
        return
    path = paths.make_dir(paths.resolve(workdir) / ".locks") / f"{role}.json"
    host = socket.gethostname()
    held = _read(path)
    if held is not None and _live(held, host, lease_s):
        raise WorkdirBusyError(f"--workdir {workdir} is in use ({role}) by another score_jax "
                               f"{_describe(held)}. Stop that job or use another workdir; a job "
                               f"that died on another host frees it {lease_s:.0f} s after its "
                               f"last heartbeat.")
    if held is not None:
        report(f"taking over the {role} lock of {workdir} from a job that is gone: "
               f"{_describe(held)}")
    lock = {"job": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": _start_time(os.getpid()), "processes": jax.process_count(),
            "mode": mode, "command": " ".join(sys.argv)[:500],
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "heartbeat": time.time()}
    _write(path, lock)
    time.sleep(settle_s)
    winner = _read(path)
    if winner is None or winner["job"] != lock["job"]:
        raise WorkdirBusyError(f"--workdir {workdir}: another score_jax job took the {role} lock "
                               f"at the same moment: {_describe(winner or {})}.")
    beat = _Heartbeat(path, lock, beat_s)
    beat.start()
    try:
        yield
    finally:
        beat.stop.set()
        beat.join()
        current = _read(path)
        if current is not None and current["job"] == lock["job"]:
            with contextlib.suppress(OSError):
                path.unlink()

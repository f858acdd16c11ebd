"""One line, not a C++ abort, when a multi-host job loses its coordinator.

When a process of a `jax.distributed` job dies, the distributed client of every other process
aborts its process from a C++ thread (a check failure, SIGABRT) and JAX offers no hook that works:
the client's `missed_heartbeat_callback` cannot be called from Python (its status argument has no
converter). So a multi-process run forks before JAX starts: the child runs the job, the parent only
waits. If the child is aborted, the parent asks whether the coordinator still accepts connections
and prints one line that names the lost process; signals sent to the parent (a pod's SIGTERM) are
passed on to the child, and the child dies with the parent (PR_SET_PDEATHSIG), so killing the
process a user started still kills the job process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
from typing import Optional

_PR_SET_PDEATHSIG = 1
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def _coordinator_reachable(address: str) -> Optional[bool]:
    """Whether host:port accepts a TCP connection (None when the address is not host:port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return None
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def lost_peer_line(process_id: int, address: Optional[str], reachable: Optional[bool]) -> str:
    """The line printed when the JAX runtime aborted process `process_id`."""
    if reachable is False:
        cause = (f"process 0, the job's coordinator at {address}, is gone (killed, or its host "
                 f"failed), and the JAX runtime aborted this process")
    else:
        cause = ("the JAX runtime aborted this process because the job's coordination service "
                 "reported a failed process (see the other processes' logs)")
    return (f"error: process {process_id}: {cause}. Rerun the whole job to resume from its newest "
            f"checkpoint.")


def fork_and_watch(process_id: int, address: Optional[str]) -> None:
    """In the parent: wait for the child and exit with its code (never returns). In the child:
    return, and run the job. Call before anything starts JAX or a thread."""
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
        return
    for sig in _FORWARDED:
        signal.signal(sig, lambda s, _frame: os.kill(child, s))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGABRT:
        reachable = _coordinator_reachable(address) if address and process_id != 0 else None
        print(lost_peer_line(process_id, address, reachable), file=sys.stderr, flush=True)
        os._exit(3)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status)
             else 128 + os.WTERMSIG(status))

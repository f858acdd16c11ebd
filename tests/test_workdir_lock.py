"""The workdir lock: one live writer per role; dead jobs' locks are taken over, live ones refused."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from score_jax import workdir_lock
from score_jax.workdir_lock import WorkdirBusyError


def _lock_file(workdir, role="train"):
    return workdir / ".locks" / f"{role}.json"


def _fake_lock(workdir, role="train", **fields):
    lock = {"job": "f" * 32, "host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": workdir_lock._start_time(os.getpid()), "processes": 1, "mode": "train",
            "command": "main.py --workdir x", "started": "earlier", "heartbeat": time.time(),
            **fields}
    _lock_file(workdir, role).parent.mkdir(parents=True, exist_ok=True)
    _lock_file(workdir, role).write_text(json.dumps(lock))


def _claim(workdir, role="train", **kw):
    return workdir_lock.claim(workdir, role, mode="train", settle_s=0.01, **kw)


def test_a_live_lock_refuses_a_second_writer_of_its_role_only(tmp_path):
    with _claim(tmp_path):
        lock = json.loads(_lock_file(tmp_path).read_text())
        assert lock["pid"] == os.getpid() and lock["host"] == socket.gethostname()
        with pytest.raises(WorkdirBusyError, match=f"pid {os.getpid()}") as err:
            with _claim(tmp_path):
                pass
        assert "\n" not in str(err.value) and "in use (train)" in str(err.value)
        with _claim(tmp_path, "eval-eval"):  # an evaluator beside a trainer is fine
            pass
        assert _lock_file(tmp_path).exists()  # the refused claim did not remove the holder's lock
    assert not _lock_file(tmp_path).exists()


def test_the_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    _fake_lock(tmp_path, pid=int(dead.stdout), heartbeat=time.time())
    said = []
    with _claim(tmp_path, report=said.append):
        assert json.loads(_lock_file(tmp_path).read_text())["pid"] == os.getpid()
    assert len(said) == 1 and f"pid {int(dead.stdout)}" in said[0]


def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path):
    # Our own pid, but the process that wrote the lock started at another time: it is gone.
    _fake_lock(tmp_path, pid_start="1")
    with _claim(tmp_path, report=lambda _: None):
        pass


def test_another_hosts_lock_lives_until_its_lease_expires(tmp_path):
    _fake_lock(tmp_path, host="tpu-vm-7", pid=1, heartbeat=time.time() - 5)
    with pytest.raises(WorkdirBusyError, match="tpu-vm-7.*heartbeat 5 s ago"):
        with _claim(tmp_path, lease_s=60):
            pass
    _fake_lock(tmp_path, host="tpu-vm-7", pid=1, heartbeat=time.time() - 61)
    with _claim(tmp_path, lease_s=60, report=lambda _: None):
        assert json.loads(_lock_file(tmp_path).read_text())["host"] == socket.gethostname()


def test_heartbeat_refreshes_the_lease(tmp_path):
    with _claim(tmp_path, beat_s=0.05):
        first = json.loads(_lock_file(tmp_path).read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads(_lock_file(tmp_path).read_text())["heartbeat"] > first


def test_of_two_jobs_starting_together_exactly_one_wins(tmp_path):
    # Either the second sees the first's live lock, or both see none, both write, and on reading
    # back the one whose write landed first finds the other's: one runs, one is refused.
    results = []
    barrier = threading.Barrier(2)

    def job():
        barrier.wait()
        try:
            with workdir_lock.claim(tmp_path, "train", mode="train", settle_s=0.3):
                time.sleep(0.5)
            results.append("ran")
        except WorkdirBusyError:
            results.append("refused")

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ran", "refused"]


def test_a_refused_training_job_leaves_the_live_jobs_unfinished_checkpoint_alone(tmp_path):
    # A live job's workdir mid-save: orbax's temporary directory of the checkpoint it is writing.
    # A second job that opened its checkpoint manager before asking for the lock would delete it
    # (a writing manager removes unfinished checkpoints when it opens) and only then be refused.
    from configs.vp import digits_ddpmpp_continuous
    from score_jax import train

    _fake_lock(tmp_path / "work")
    saving = tmp_path / "work" / "checkpoints" / "8.orbax-checkpoint-tmp-1765000000"
    saving.mkdir(parents=True)
    (saving / "_CHECKPOINT_METADATA").write_text("{}")
    config = digits_ddpmpp_continuous.get_config()
    config.data.data_dir = str(tmp_path / "tfds")  # the digits prepared here, not in ~
    with pytest.raises(WorkdirBusyError, match=f"in use \\(train\\).*pid {os.getpid()}"):
        train.train(config, tmp_path / "work")
    time.sleep(1.0)  # orbax deletes in a background thread: time for a wrongly started deletion
    assert sorted(p.name for p in saving.parent.iterdir()) == [saving.name]
    assert (saving / "_CHECKPOINT_METADATA").read_text() == "{}"

"""Checkpoints: orbax round trip, keep policy, damaged and half-written checkpoints, SIGKILL resume.

The resume tests run the real `main.py` in subprocesses on a cut-down config and compare the final
parameters of interrupted-and-restarted runs with an uninterrupted run, bit for bit: the per-step
key is fold_in(key, step), each batch is a pure function of (seed, step), steps are grouped into
compiled calls by a pure function of the step, and the checkpoint stores every float exactly.
"""

import pathlib
import random
import signal
import subprocess
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_MODEL, main_cmd, main_env, shared_build
from score_jax import checkpoints

# These tests and test_gcs_workdir's one-process test start from the same reference run
# (shared_build): one xdist worker runs them in order, so that none waits for it (conftest.py).
pytestmark = pytest.mark.xdist_group("checkpoints_reference")

TINY = [*TINY_MODEL, "--config.training.n_iters=24", "--config.training.snapshot_freq=12",
        "--config.training.snapshot_freq_for_preemption=3", "--config.training.log_freq=4",
        "--config.training.snapshot_sampling=False"]
_env = main_env


def _cmd(workdir: pathlib.Path, extra=()) -> list:
    return main_cmd(f"--workdir={workdir}", *TINY, *extra)


def _params(workdir: pathlib.Path):
    """Final-step params and EMA of a run, read back through our own restore."""
    manager = checkpoints.open_manager(workdir / "checkpoints", snapshot_every=12, read_only=True)
    step = max(manager.all_steps())
    state, _ = checkpoints.restore_as_saved(manager, step)
    manager.close()
    return step, state["params"], state["params_ema"]


def _assert_ends_as(workdir: pathlib.Path, ref_dir: pathlib.Path) -> None:
    """The run in workdir reached step 24 with the reference run's parameters and EMA, bit for bit."""
    step, params, ema = _params(workdir)
    _, ref_params, ref_ema = _params(ref_dir)
    assert step == 24
    _assert_same(params, ref_params)
    _assert_same(ema, ref_ema)


def _assert_same(a, b):
    flat_a, flat_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --------------------------------------------------------------------------- in-process


def _tree(v: float):
    return {"w": jnp.arange(300, dtype=jnp.float32) + v, "step": jnp.int32(int(v)),
            "key": jax.random.PRNGKey(int(v))}


def _save_steps(directory, steps, snapshot_every=4):
    manager = checkpoints.open_manager(directory, snapshot_every=snapshot_every, async_save=False)
    for s in steps:
        checkpoints.save(manager, s, _tree(s), {"step": s})
    manager.close()


def test_round_trip_and_keep_policy(tmp_path):
    _save_steps(tmp_path, [2, 4, 6, 8, 10])
    # Newest (10) plus every snapshot (4, 8); the preemption checkpoints 2 and 6 were superseded.
    assert checkpoints.snapshot_steps(tmp_path) == [4, 8, 10]
    manager = checkpoints.open_manager(tmp_path, snapshot_every=4)
    restored = checkpoints.restore_latest(manager, _tree(0))
    assert restored.step == 10 and restored.data_state == {"step": 10}
    _assert_same(restored.state, _tree(10))


def _truncate_dir(path: pathlib.Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            with open(f, "r+b") as fh:
                fh.truncate(f.stat().st_size // 2)


@pytest.mark.parametrize("what", ["all", "data"])
def test_damaged_latest_falls_back(tmp_path, what):
    _save_steps(tmp_path, [4, 6])
    target = tmp_path / "6" / "state"
    if what == "all":
        _truncate_dir(tmp_path / "6")
    else:  # only the array chunks: the metadata still looks fine
        for f in target.rglob("*"):
            if f.is_file() and f.parent.name == "d":
                with open(f, "r+b") as fh:
                    fh.truncate(f.stat().st_size // 2)
    reports = []
    manager = checkpoints.open_manager(tmp_path, snapshot_every=4)
    restored = checkpoints.restore_latest(manager, _tree(0), report=reports.append)
    assert restored.step == 4
    _assert_same(restored.state, _tree(4))
    assert len(reports) == 1 and "step 6" in reports[0]
    # Set aside for inspection, not deleted; a new checkpoint at step 6 can now be written.
    assert [p.name.split("-")[0] for p in (tmp_path.parent / f"{tmp_path.name}-damaged").iterdir()] == ["6"]
    checkpoints.save(manager, 6, _tree(6), None)
    manager.wait_until_finished()


def test_half_written_and_failed_saves_keep_complete_ones(tmp_path):
    _save_steps(tmp_path, [4, 6])
    # A save killed midway leaves an orbax temporary directory: never restored, never counted.
    (tmp_path / "9.orbax-checkpoint-tmp-123").mkdir()
    (tmp_path / "9.orbax-checkpoint-tmp-123" / "junk").write_bytes(b"\0" * 10)
    manager = checkpoints.open_manager(tmp_path, snapshot_every=4, async_save=False)
    assert checkpoints.restore_latest(manager, _tree(0)).step == 6
    # A save that fails (an unserialisable leaf) deletes and overwrites nothing.
    with pytest.raises(Exception):  # noqa: B017 - whatever orbax raises for an unserialisable leaf
        checkpoints.save(manager, 7, {"w": object()}, None)
    manager.close()
    assert checkpoints.snapshot_steps(tmp_path) == [4, 6]
    manager = checkpoints.open_manager(tmp_path, snapshot_every=4)
    _assert_same(checkpoints.restore_latest(manager, _tree(0)).state, _tree(6))


def test_reading_beside_a_live_writer_that_deletes_superseded_checkpoints(tmp_path):
    # A training job saving in this directory (keeping only its newest checkpoint) while an
    # evaluation opens it: a step listed by the reader may be deleted before its metadata is read.
    # Each open must then see the directory as it is, never fail. Without listing again about
    # 1 open in 50 failed here: 3 s of opens (hundreds) make a miss all but impossible.
    writer = checkpoints.open_manager(tmp_path, snapshot_every=10**6, async_save=False)
    stop, saved = threading.Event(), [0]

    def train():
        while not stop.is_set():
            checkpoints.save(writer, saved[0] + 1, _tree(saved[0] + 1), None)
            writer.wait_until_finished()
            saved[0] += 1

    trainer = threading.Thread(target=train)
    trainer.start()
    try:
        while not saved[0]:
            time.sleep(0.01)
        opens, deadline = 0, time.time() + 3.0
        while time.time() < deadline:
            reader = checkpoints.open_manager(tmp_path, snapshot_every=10**6, read_only=True)
            assert reader.all_steps()
            reader.close()
            opens += 1
    finally:
        stop.set()
        trainer.join()
        writer.close()
    assert opens > 50 and saved[0] > 10  # both sides were busy
    assert checkpoints.snapshot_steps(tmp_path) == [saved[0]]


# --------------------------------------------------------------------------- subprocesses


def _reference_run(directory: pathlib.Path) -> None:
    t0 = time.perf_counter()
    out = subprocess.run(_cmd(directory / "reference"), env=_env(directory), capture_output=True,
                         text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    (directory / "seconds").write_text(repr(time.perf_counter() - t0))


@pytest.fixture
def reference(tmp_path):
    """An uninterrupted tiny run, made once per test run (shared_build; read only):
    (its workdir, its wall seconds, env, a directory for this test's runs)."""
    shared = shared_build("checkpoints_reference", _reference_run)
    seconds = float((shared / "seconds").read_text())
    return shared / "reference", seconds, _env(tmp_path), tmp_path


def test_sigkill_at_random_points_then_resume_is_bitwise_identical(reference):
    ref_dir, ref_seconds, env, root = reference
    assert _params(ref_dir)[0] == 24
    rng = random.Random(1234)
    for trial in range(2):
        workdir = root / f"killed_{trial}"
        proc = subprocess.Popen(_cmd(workdir), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        # Kill somewhere between start-up and the end of training (the first run sets the scale).
        time.sleep(rng.uniform(0.3, 0.9) * ref_seconds)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        out = subprocess.run(_cmd(workdir), env=env, capture_output=True, text=True, timeout=240)
        assert out.returncode == 0, out.stderr[-3000:]
        _assert_ends_as(workdir, ref_dir)


def test_truncated_latest_checkpoint_uses_previous(reference):
    ref_dir, _, env, root = reference
    workdir = root / "truncated"
    import shutil
    shutil.copytree(ref_dir / "checkpoints", workdir / "checkpoints")
    _truncate_dir(workdir / "checkpoints" / "24")
    out = subprocess.run(_cmd(workdir), env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 24" in out.stderr + out.stdout and "unreadable" in out.stderr + out.stdout
    # 24 was the newest; the preemption checkpoint 21 was removed once 24 was complete, so the
    # previous complete checkpoint is the snapshot at 12.
    assert "resuming from the checkpoint at step 12" in out.stdout
    assert (workdir / "checkpoints-damaged").is_dir()
    _assert_ends_as(workdir, ref_dir)


def test_sigterm_saves_and_exits_cleanly(reference):
    _, ref_seconds, env, root = reference
    workdir = root / "sigterm"
    proc = subprocess.Popen(_cmd(workdir, ["--config.training.n_iters=100000"]), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait for the first preemption checkpoint, so training is under way, then send SIGTERM.
    deadline = time.time() + 180
    while not (workdir / "checkpoints" / "3").is_dir() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "preemption notice" in stdout + stderr
    steps = checkpoints.snapshot_steps(workdir / "checkpoints")
    assert steps and steps[-1] < 100000 and "preemption notice: checkpoint saved at step " \
        f"{steps[-1]}" in stdout


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs mounted at tmp_path/disk (root only), and `remount(options)` for it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")

    def remount(option: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{option}", str(mount)], check=True)

    yield mount, remount
    subprocess.run(["umount", "-R", "-l", str(mount)], check=False)


def _one_error_line(out) -> str:
    """The run's one `error:` line, which ends its stderr; no trace anywhere."""
    errors = [l for l in out.stderr.splitlines() if l.startswith("error: ")]
    assert out.returncode == 2 and len(errors) == 1, out.stderr[-3000:]
    assert out.stderr.strip().splitlines()[-1] == errors[0], out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return errors[0]


def test_full_or_read_only_disk_stops_in_one_line_and_resumes_bitwise(reference, small_disk):
    ref_dir, _, env, _ = reference
    mount, remount = small_disk
    workdir = mount / "run"
    every3 = ["--config.training.snapshot_freq=3"]  # keep every checkpoint, so the disk fills
    # tmpfs charges whole 4 KiB pages per file and directory.
    size = sum(-(-f.stat().st_size // 4096) * 4096 if f.is_file() else 4096
               for f in (ref_dir / "checkpoints" / "12").rglob("*"))
    # Room for one checkpoint and a half: the second one's write fails with ENOSPC.
    remount(f"size={int(1.5 * size) // 4096 * 4096}")
    out = subprocess.run(_cmd(workdir, every3), env=env, capture_output=True, text=True, timeout=240)
    line = _one_error_line(out)
    assert "No space left on device" in line and "rerun the same command" in line
    kept = checkpoints.snapshot_steps(workdir / "checkpoints")
    assert kept and kept[-1] < 24 and f"newest {kept[-1]}" in line

    # Room again, then the disk turns read-only (EROFS) while the resumed run is writing.
    remount("size=64m")
    proc = subprocess.Popen(_cmd(workdir, every3), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while not (workdir / "checkpoints" / str(kept[-1] + 3)).is_dir() and time.time() < deadline:
        time.sleep(0.02)
    # A read-only bind mount over the workdir (the tmpfs itself cannot turn read-only while the
    # run holds files open): every new file and directory under it fails with EROFS.
    subprocess.run(["mount", "--bind", str(workdir), str(workdir)], check=True)
    # The remount is refused (EBUSY) while a file is open for writing through the new bind; the
    # run closes its files between writes.
    for _ in range(500):
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(workdir)]).returncode == 0:
            break
        time.sleep(0.01)
    else:
        pytest.fail("could not make the workdir read-only")
    stdout, stderr = proc.communicate(timeout=180)
    line = _one_error_line(subprocess.CompletedProcess([], proc.returncode, stdout, stderr))
    assert "Read-only file system" in line
    assert checkpoints.snapshot_steps(workdir / "checkpoints")[-1] < 24

    # Writable again: the rerun resumes from the newest complete checkpoint and ends bit for bit
    # where the uninterrupted run did.
    subprocess.run(["umount", str(workdir)], check=True)
    out = subprocess.run(_cmd(workdir, every3), env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from the checkpoint at step" in out.stdout
    _assert_ends_as(workdir, ref_dir)


def test_second_job_on_a_live_workdir_is_refused_and_a_killed_ones_lock_is_taken_over(reference):
    _, _, env, root = reference
    workdir = root / "locked"
    first = subprocess.Popen(_cmd(workdir, ["--config.training.n_iters=100000"]), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not (workdir / "checkpoints" / "3").is_dir() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run(_cmd(workdir), env=env, capture_output=True, text=True,
                                timeout=240)
        line = _one_error_line(second)
        assert "in use (train)" in line and f"pid {first.pid}" in line
        assert first.poll() is None  # the first job was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed job's lock stays behind but names a dead process: the rerun takes it over.
    assert (workdir / ".locks" / "train.json").exists()
    out = subprocess.run(_cmd(workdir), env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"taking over the train lock of {workdir} from a job that is gone" in out.stdout
    assert f"pid {first.pid}" in out.stdout
    assert not (workdir / ".locks" / "train.json").exists()

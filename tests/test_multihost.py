"""Multi-host: processes on 127.0.0.1 joined by jax.distributed (one CPU device each) run the real
`main.py`. Training: the replicas agree bit for bit and one set of checkpoints is written (orbax
writes from the primary process). Evaluation: two processes give the one-process test loss (float
tolerance) and bits/dim (solver tolerance), only process 0 writes, and a process killed mid-run
makes the other stop within seconds, naming it; the rerun resumes."""

import hashlib
import json
import pathlib
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import TINY_MODEL, free_port, main_cmd, main_env, run_main, shared_build

TINY = [*TINY_MODEL, "--config.training.n_iters=4", "--config.training.snapshot_freq=2",
        "--config.training.snapshot_freq_for_preemption=2", "--config.training.log_freq=2",
        "--config.training.snapshot_sampling=False"]
EVAL = [*TINY, "--config.eval.begin_ckpt=1", "--config.eval.end_ckpt=2",
        "--config.eval.batch_size=64", "--config.eval.enable_sampling=False"]


# Tests that start from the same shared build run on one worker, in order (conftest.py).
TWO_PROCESS_RUN = pytest.mark.xdist_group("multihost_two_process")
TRAINED = pytest.mark.xdist_group("multihost_trained")


def _start(args, env, n: int) -> list[subprocess.Popen]:
    address = f"127.0.0.1:{free_port()}"
    return [subprocess.Popen(
        main_cmd(*args, f"--coordinator_address={address}", f"--num_processes={n}",
                 f"--process_id={i}"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]


def _finish(procs, timeout=280) -> list[tuple[str, str]]:
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("multi-host run timed out")
    return outs


# Checkpoints every 4 steps, all kept (multi-process saves synchronise the processes: few of them).
TRAIN24 = [*TINY, "--config.training.n_iters=24", "--config.training.snapshot_freq=4",
           "--config.training.snapshot_freq_for_preemption=4"]


def _digests(outs) -> dict[int, tuple[int, str]]:
    """{process: (final step, sha256 of its local parameters)} from the runs' last lines."""
    digests = {}
    for out, _ in outs:
        m = re.search(r"process (\d)/2: step (\d+), local params sha256 ([0-9a-f]{64})", out)
        assert m, out[-2000:]
        digests[int(m.group(1))] = (int(m.group(2)), m.group(3))
    return digests


def _run_two(workdir, env) -> dict[int, tuple[int, str]]:
    procs = _start([f"--workdir={workdir}", *TRAIN24], env, 2)
    outs = _finish(procs)
    for p, (_, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-4000:]
    return _digests(outs)


def _train_two(directory: pathlib.Path) -> None:
    digests = _run_two(directory / "work", main_env(directory))
    (directory / "digests.json").write_text(json.dumps(digests))


@pytest.fixture
def two_process_run(tmp_path):
    """An uninterrupted two-process training run of 24 steps, made once per test run:
    (its workdir, {process: (step, params digest)}, an environment, a scratch directory)."""
    built = shared_build("multihost_two_process", _train_two)
    digests = {int(p): tuple(v) for p, v in json.loads((built / "digests.json").read_text()).items()}
    return built / "work", digests, main_env(tmp_path), tmp_path


@TWO_PROCESS_RUN
def test_two_processes_train_agree_and_write_one_checkpoint_set(two_process_run):
    workdir, digests, _, _ = two_process_run
    assert digests[0] == digests[1] and digests[0][0] == 24
    # One set of checkpoints: every 4th step, each complete, no per-process copies or leftovers.
    entries = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert sorted(int(e) for e in entries if e.isdigit()) == list(range(4, 25, 4))
    assert not [e for e in entries if "tmp" in e]
    # Only process 0 writes logs.
    assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    # The checkpoint holds the agreed parameters.
    import jax

    from score_jax import checkpoints
    manager = checkpoints.open_manager(workdir / "checkpoints", snapshot_every=4, read_only=True)
    state, _ = checkpoints.restore_as_saved(manager, 24)
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state["params"]):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    assert h.hexdigest() == digests[0][1]


def _wait_for(path, timeout=240):
    deadline = time.time() + timeout
    while not path.is_dir() and time.time() < deadline:
        time.sleep(0.05)
    assert path.is_dir(), f"{path} never appeared"


@TWO_PROCESS_RUN
def test_sigterm_then_killed_coordinator_then_rerun_resumes_bitwise(two_process_run):
    """A pod's preemption notice (SIGTERM to every process) saves once and exits cleanly; the
    resumed job then loses its coordinator (killed), and the other process stops within seconds in
    one line that names it; the rerun ends with the uninterrupted run's parameters, bit for bit.

    One chain of three jobs rather than two tests of two jobs each: every job here compiles and
    starts two processes, the slow part of these tests."""
    _, digests, env, scratch = two_process_run
    workdir = scratch / "interrupted"
    from score_jax import checkpoints

    procs = _start([f"--workdir={workdir}", *TRAIN24], env, 2)
    _wait_for(workdir / "checkpoints" / "4")
    for p in procs:
        p.send_signal(signal.SIGTERM)
    outs = _finish(procs)
    for p, (_, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-4000:]
    step = _digests(outs)[0][0]
    # Checkpoints every 4 steps: the resumed job is killed after its first one, and must have
    # steps left then (at least 12, as many as the kill after step 12 of a fresh job left).
    assert step < 12, "the run went on too long after the notice; nothing left to test"
    assert f"preemption notice: checkpoint saved at step {step}" in outs[0][0]
    assert checkpoints.snapshot_steps(workdir / "checkpoints")[-1] == step

    procs = _start([f"--workdir={workdir}", *TRAIN24], env, 2)
    _wait_for(workdir / "checkpoints" / str(4 * (step // 4 + 1)))
    procs[0].kill()
    killed_at = time.time()
    try:
        _, stderr = procs[1].communicate(timeout=60)
    finally:
        procs[0].communicate()
    assert procs[1].returncode not in (0, None) and time.time() - killed_at < 60
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: process 1: process 0, the job's coordinator at 127.0.0.1:"), \
        stderr[-3000:]

    assert _run_two(workdir, env) == digests


def _train(directory: pathlib.Path) -> None:
    out = run_main([f"--workdir={directory / 'work'}", *TINY], main_env(directory))
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir with checkpoints at steps 2 and 4 (one process), and its environment.

    Trained once per test run (shared_build) and copied, so that the tests below can run on both
    workers, each writing its own evaluation folders.
    """
    root = tmp_path_factory.mktemp("multihost_eval")
    shutil.copytree(shared_build("multihost_trained", _train) / "work", root / "work")
    return root / "work", main_env(root)


def _results(workdir, folder, label) -> dict:
    summary = json.loads((workdir / folder / "summary.json").read_text())
    with np.load(workdir / folder / f"{label}.npz") as d:
        return {**summary[label], "per_example": d["bpd_per_example"]}


@TRAINED
def test_killed_process_stops_the_other_rerun_resumes_and_two_processes_equal_one(trained):
    """A two-process evaluation whose process 1 is killed: process 0 stops within seconds naming
    it; a one-process rerun keeps the finished checkpoint and evaluates the other. What the two
    processes wrote for the finished checkpoint before the kill is a one-process evaluation's
    loss and bits/dim.

    Bits/dim solve an ODE for every test digit (the slow part): the rerun evaluates its
    checkpoint without them, so that only the killed run and the one-process reference do."""
    workdir, env = trained
    args = [f"--workdir={workdir}", "--mode=eval", "--eval_folder=eval_1", *EVAL]
    procs = _start(args, env, 2)
    deadline = time.time() + 240
    while not (workdir / "eval_1" / "ckpt_1.npz").exists() and time.time() < deadline:
        time.sleep(0.1)
    assert (workdir / "eval_1" / "ckpt_1.npz").exists(), "first checkpoint never evaluated"
    procs[1].kill()
    killed_at = time.time()
    try:
        _, stderr = procs[0].communicate(timeout=60)
    finally:
        procs[1].communicate()
    assert procs[0].returncode not in (0, None)
    assert time.time() - killed_at < 30
    assert "process 1" in stderr and "Traceback" not in stderr, stderr[-3000:]
    out = run_main([*args, "--config.eval.enable_bpd=False"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ckpt_1 (step 2): already evaluated" in out.stdout
    assert "ckpt_2 (step 4): test loss" in out.stdout
    # Only process 0 wrote, and the killed run left nothing of its own: one file per checkpoint
    # and the summary.
    assert sorted(p.name for p in (workdir / "eval_1").iterdir()) == \
        ["ckpt_1.npz", "ckpt_2.npz", "metrics.png", "summary.json"]

    # Noise keys depend on the step only, so the checkpoint range does not change ckpt_1's result.
    out = run_main([f"--workdir={workdir}", "--mode=eval", "--eval_folder=eval_2", *EVAL,
                    "--config.eval.end_ckpt=1"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    two, one = _results(workdir, "eval_1", "ckpt_1"), _results(workdir, "eval_2", "ckpt_1")
    # Same examples, same noise keys: only the order of float sums may differ.
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)
    # Each process solves its half with its own adaptive steps: the two agree to the solver's
    # relative tolerance (eval.bpd_rtol = 1e-3 in the digits config).
    assert two["bpd"] == pytest.approx(one["bpd"], rel=2e-3)
    assert one["per_example"].shape == two["per_example"].shape == (1, 297)
    np.testing.assert_allclose(two["per_example"], one["per_example"], rtol=1e-2)


@TRAINED
def test_two_process_fid_stats_and_samples_equal_one_process(trained):
    """--mode fid_stats on two processes gives the one-process reference statistics (every example
    once, in order); --mode sample draws the requested number once, written by process 0 only."""
    workdir, env = trained
    stats = {n: workdir.parent / f"stats_{n}.npz" for n in (1, 2)}
    out = run_main([f"--workdir={workdir}", "--mode=fid_stats", *TINY,
                    f"--config.eval.stats_file={stats[1]}"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    args = ["--config.sample.num=6", "--config.sample.batch_size=4",
            "--config.sample.folder=sample_2"]
    procs = _start([f"--workdir={workdir}", "--mode=fid_stats", *TINY,
                    f"--config.eval.stats_file={stats[2]}"], env, 2)
    procs += _start([f"--workdir={workdir}", "--mode=sample", *TINY, *args], env, 2)
    for p, (_, stderr) in zip(procs, _finish(procs)):
        assert p.returncode == 0, stderr[-3000:]
    with np.load(stats[1]) as one, np.load(stats[2]) as two:
        assert one["pool_3"].shape == two["pool_3"].shape == (1500, 64)
        np.testing.assert_allclose(two["pool_3"], one["pool_3"], rtol=1e-5, atol=1e-5)
    with np.load(workdir / "sample_2" / "unconditional" / "samples.npz") as d:
        assert d["samples"].shape == (6, 8, 8, 1) and d["samples"].dtype == np.uint8

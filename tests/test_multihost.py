"""Multi-host: two processes on 127.0.0.1 joined by jax.distributed (one CPU device each) train the
default model through the real `main.py`, agree bit for bit on their parameter replicas, and write
one set of checkpoints (orbax writes from the primary process; the other only takes part)."""

import os
import pathlib
import re
import socket
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.nf=8", "--config.model.attn_resolutions=()", "--config.training.batch_size=16",
        "--config.training.n_iters=4", "--config.training.snapshot_freq=2",
        "--config.training.snapshot_freq_for_preemption=2", "--config.training.log_freq=2",
        "--config.training.n_jitted_steps=1", "--config.training.snapshot_sampling=False"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_agree_and_write_one_checkpoint_set(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TFDS_DATA_DIR=str(tmp_path / "tfds"))
    env.pop("XLA_FLAGS", None)
    workdir = tmp_path / "work"
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), f"--workdir={workdir}", *TINY,
         f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=280))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("multi-host run timed out")
    for p, (stdout, stderr) in zip(procs, outs):
        assert p.returncode == 0, stderr[-4000:]
    digests = {}
    for stdout, _ in outs:
        m = re.search(r"process (\d)/2: step (\d+), local params sha256 ([0-9a-f]{64})", stdout)
        assert m, stdout[-2000:]
        digests[int(m.group(1))] = (int(m.group(2)), m.group(3))
    assert digests[0] == digests[1] and digests[0][0] == 4
    # One set of checkpoints: steps 2 and 4, each complete, no per-process copies or leftovers.
    entries = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert [e for e in entries if e.isdigit()] == ["2", "4"]
    assert not [e for e in entries if "tmp" in e]
    # Only process 0 writes logs.
    assert len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    # The checkpoint holds the agreed parameters.
    sys.path.insert(0, str(ROOT))
    from score_jax import checkpoints
    import hashlib
    import jax
    import numpy as np
    manager = checkpoints.open_manager(workdir / "checkpoints", snapshot_every=2, read_only=True)
    state, _ = checkpoints.restore_as_saved(manager, 4)
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state["params"]):
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    assert h.hexdigest() == digests[0][1]

"""End to end: the real `main.py` trains then evaluates on the embedded digits; user errors are clean.

All runs are subprocesses on a cut-down config (tiny DDPM++, a few steps). Oracles: files that must
exist (orbax checkpoints, TensorBoard events with the logged tags, decodable PNG grids), a finite
positive bits/dim over all 297 test examples, and for user
errors: exit code != 0, one message on stderr without a stack trace, and the workdir's files
byte-identical afterwards.
"""

import hashlib
import json
import os
import pathlib
import shutil
import struct
import subprocess

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL, main_cmd, main_env, run_main, shared_build

TINY = [*TINY_MODEL, "--config.training.n_iters=8", "--config.training.snapshot_freq=4",
        "--config.training.snapshot_freq_for_preemption=2", "--config.training.log_freq=2",
        "--config.eval.begin_ckpt=2", "--config.eval.end_ckpt=2", "--config.eval.num_samples=16",
        "--config.eval.bpd_num_repeats=1"]
_env, _main = main_env, run_main
# Inpainting and class-conditional sampling run the predictor-corrector loop, one step per SDE
# discretisation step (model.num_scales, 1000 in the config). The tests check what the loop keeps
# (known pixels, labels, shapes), not sample quality, so 50 steps cover the same code. The score
# network does not see N (continuous VP: label 999 t). Conditional sampling's classifier gradient
# is a convolution VJP inside the compiled loop, slow on XLA:CPU (DESIGN.md, "Known trap"): its
# 1000 steps took 190 s with every program already compiled.
PC_STEPS = ["--config.model.num_scales=50"]


def _read_events(path: pathlib.Path) -> dict[str, list[float]]:
    """Scalars of a TensorBoard event file: TFRecord framing, Event protos from tensorboardX."""
    from tensorboardX.proto import event_pb2
    data, out, pos = path.read_bytes(), {}, 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
        pos += 12 + length + 4
        for v in event.summary.value:
            out.setdefault(v.tag, []).append(v.simple_value)
    return out


def _snapshot_files(directory: pathlib.Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _train_then_eval(directory: pathlib.Path) -> None:
    env = _env(directory)
    for mode in ("train", "eval"):
        out = _main([f"--workdir={directory / 'work'}", f"--mode={mode}", *TINY], env)
        assert out.returncode == 0, out.stderr[-4000:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(workdir, env, root) after `main.py --mode train` then `--mode eval` on a tiny config.

    Trained once per test run (shared_build) and copied, so that this file's tests can run on
    both workers and each may write into its workdir.
    """
    root = tmp_path_factory.mktemp("runner")
    shutil.copytree(shared_build("runner_trained", _train_then_eval) / "work", root / "work")
    return root / "work", _env(root), root


def test_train_writes_checkpoints_events_and_grids(trained):
    workdir, _, _ = trained
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4, 8]  # snapshots kept; preemption checkpoints 2 and 6 superseded
    events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    scalars = _read_events(events[0])
    for tag in ("training_loss", "lr", "grad_norm", "steps_per_second"):
        assert tag in scalars and len(scalars[tag]) == 4, (tag, scalars.keys())
        assert np.all(np.isfinite(scalars[tag]))
    for step in (4, 8):
        png = workdir / "samples" / f"iter_{step}" / "samples.png"
        img = np.asarray(Image.open(png))
        assert img.ndim == 2 and img.shape[0] > 64  # 8x8 tiles enlarged to readable size
        with np.load(png.with_suffix(".npz")) as d:
            assert d["samples"].shape == (64, 8, 8, 1) and d["samples"].dtype == np.uint8


def test_eval_writes_finite_bpd_loss_samples_and_summary(trained):
    workdir, _, _ = trained
    summary = json.loads((workdir / "eval" / "summary.json").read_text())
    assert sorted(summary) == ["ckpt_2"]  # eval.begin_ckpt = end_ckpt = 2: step 2 * 4
    for label, step in (("ckpt_2", 8),):
        entry = summary[label]
        assert entry["step"] == step
        assert np.isfinite(entry["loss"]) and entry["loss"] > 0
        # 8 steps of training: worse than uniform noise (8 bits) is expected, but finite, positive.
        assert 0 < entry["bpd"] < 40, entry
        with np.load(workdir / "eval" / f"{label}.npz") as d:
            # every one of the 297 test examples counted, once per repeat
            assert d["bpd_per_example"].shape == (1, 297)
            assert np.isclose(d["bpd_per_example"].mean(), entry["bpd"])
        assert (workdir / "eval" / label / "samples.png").is_file()
        # Sample quality by the digits classifier: a distance, a score in [1, 10], a histogram.
        assert entry["fd_digits"] > 0 and 1 <= entry["is_digits"] <= 10
        assert sum(entry[f"class_{c}"] for c in range(10)) == pytest.approx(1.0)
        assert 0 <= entry["precision_digits"] <= 1 and 0 <= entry["recall_digits"] <= 1
        with np.load(workdir / "eval" / f"report_{label}.npz") as d:
            assert float(d["fd_digits"]) == entry["fd_digits"]
    assert Image.open(workdir / "eval" / "metrics.png").size[0] > 0


def test_fid_stats_mode_gives_the_reference_of_the_digits_metrics(trained):
    """Reference statistics written by --mode fid_stats (through the data pipeline) give the
    FD-digits that evaluation computes from the train split on the fly (digits_net's own reader)."""
    workdir, env, root = trained
    stats = root / "stats" / "digits_stats.npz"
    out = _main([f"--workdir={workdir}", "--mode=fid_stats", *TINY,
                 f"--config.eval.stats_file={stats}"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(stats) as d:
        assert d["pool_3"].shape == (1500, 64) and d["sigma"].shape == (64, 64)
    out = _main([f"--workdir={workdir}", "--mode=eval", "--eval_folder=eval_stats", *TINY,
                 "--config.eval.enable_bpd=False", "--config.eval.enable_loss=False",
                 f"--config.eval.stats_file={stats}"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    with_file = json.loads((workdir / "eval_stats" / "summary.json").read_text())["ckpt_2"]
    on_the_fly = json.loads((workdir / "eval" / "summary.json").read_text())["ckpt_2"]
    assert with_file["fd_digits"] == pytest.approx(on_the_fly["fd_digits"], rel=1e-6)


def test_eval_is_resumable(trained):
    workdir, env, _ = trained
    before = _snapshot_files(workdir / "eval")
    out = _main([f"--workdir={workdir}", "--mode=eval", *TINY], env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("already evaluated") == 1
    after = _snapshot_files(workdir / "eval")
    assert {k: v for k, v in after.items() if k != "summary.json"} == \
        {k: v for k, v in before.items() if k != "summary.json"}


def _unwritable(root: pathlib.Path) -> pathlib.Path:
    if os.geteuid() == 0:  # root ignores permission bits; sysfs refuses new directories
        return pathlib.Path("/sys/score_jax_workdir")
    ro = root / "readonly"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o500)
    return ro / "work"


def test_user_errors_are_one_clean_message(trained):
    workdir, env, root = trained
    before = _snapshot_files(workdir)
    empty = root / "no_data"
    empty.mkdir(exist_ok=True)
    cases = {
        "bad mode": ([f"--workdir={workdir}", "--mode=bogus"], "mode"),
        "missing config file": ([f"--workdir={workdir}", "--config=configs/vp/no_such_file.py"],
                                "no_such_file.py"),
        "unknown config field": ([f"--workdir={workdir}", "--config.training.n_iterz=3"],
                                 "n_iterz"),
        "invalid config value": ([f"--workdir={workdir}", *TINY, "--config.training.sde=bogus"],
                                 "training.sde"),
        "missing data set": ([f"--workdir={workdir}", *TINY, "--config.data.dataset=cifar10",
                              f"--config.data.data_dir={empty}"], str(empty)),
        "unwritable workdir": ([f"--workdir={_unwritable(root)}", *TINY], "not writable"),
        "missing workdir parent": ([f"--workdir={root / 'nope' / 'work'}", *TINY], "parent"),
    }
    procs = {name: subprocess.Popen(main_cmd(*args), env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=240)
        assert proc.returncode != 0, name
        assert "Traceback" not in stderr, (name, stderr[-3000:])
        assert cases[name][1] in stderr, (name, stderr[-3000:])
    assert _snapshot_files(workdir) == before
    assert not (root / "nope").exists()


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    env = _env(tmp_path)
    workdir = tmp_path / "nan"
    out = _main([f"--workdir={workdir}", *TINY, "--config.optim.lr=1e30",
                 "--config.optim.warmup=0", "--config.optim.grad_clip=-1"], env)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "non-finite loss" in out.stderr and "at step " in out.stderr
    step = int(out.stderr.split("at step ")[1].split(";")[0])
    saved = [int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()]
    assert all(s < step for s in saved)


def test_sample_mode_tasks_keep_their_inputs(trained):
    """Inpainting keeps the known pixels bit for bit; interpolation paths start and end at the
    inputs (encode -> decode round trip, to the ODE tolerance); grids are written as PNG."""
    workdir, env, _ = trained
    base = [f"--workdir={workdir}", "--mode=sample", *TINY, *PC_STEPS, "--config.sample.num=4",
            "--config.sample.batch_size=4", "--config.sample.num_points=3"]
    # The interpolation's round trip at the ODE tolerance 1e-4 (the config's 1e-3 leaves a mean
    # error of 2.8 levels on the one-resolution TINY_MODEL's rougher field).
    tasks = {"inpaint": [], "interpolate": ["--config.sampling.ode_rtol=1e-4",
                                             "--config.sampling.ode_atol=1e-4"]}
    for task, options in tasks.items():
        out = _main([*base, f"--config.sample.task={task}", *options], env)
        assert out.returncode == 0, out.stderr[-3000:]
        with np.load(workdir / "sample" / task / "result.npz") as d:
            result = dict(d)
        assert Image.open(workdir / "sample" / task / "grid.png").size[0] > 0
        if task == "inpaint":
            known = result["mask"] > 0
            assert known.any() and not known.all()
            np.testing.assert_array_equal(result["output"][known], result["input"][known])
        else:
            assert result["output"].shape == (2, 3, 8, 8, 1)
            ends = result["output"][:, [0, -1]].reshape(4, 8, 8, 1).astype(int)
            # uint8 levels, after an encode -> decode round trip at the ODE tolerance 1e-4
            error = np.abs(ends - result["input"].astype(int))
            assert error.mean() <= 2 and error.max() <= 16


def test_train_classifier_then_conditional_samples(trained):
    """--mode train_classifier learns the digits from noisy inputs (far above chance after 300
    steps) and --mode sample --config.sample.task=conditional uses it, labels in turn."""
    workdir, env, _ = trained
    out = _main([f"--workdir={workdir}", "--mode=train_classifier", *TINY,
                 "--config.classifier.n_iters=300"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    accuracy = float(out.stdout.split("clean accuracy ")[1].split()[0])
    assert accuracy > 0.5, out.stdout  # chance is 0.1
    out = _main([f"--workdir={workdir}", "--mode=sample", *TINY, *PC_STEPS,
                 "--config.sample.task=conditional",
                 "--config.sample.num=4", "--config.sample.batch_size=4"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    with np.load(workdir / "sample" / "conditional" / "result.npz") as d:
        assert d["samples"].shape == (4, 8, 8, 1) and list(d["labels"]) == [0, 1, 2, 3]
        assert 0.0 <= float(d["agreement"]) <= 1.0

"""Training mode: a row of small steps (data, compiled step, log, checkpoint, snapshot samples).

The objects come from `experiment`; the train step is compiled once over a device mesh (batch
sharded along 'data', state replicated, state buffers donated). Checkpoints are orbax
(score_jax.checkpoints): a run killed at any point and restarted resumes from the newest complete
checkpoint and reproduces the uninterrupted run, because each step's noise is `fold_in(key, step)`,
each batch is a pure function of (seed, step), and steps are grouped into compiled calls by a pure
function of the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from score_jax import checkpoints, datasets, experiment, images, parallel, reporting
from score_jax import paths, sample_quality, train_state
from score_jax import workdir as workdir_lib
from score_jax import workdir_lock
from score_jax.errors import InvalidInputError, NonFiniteError

_SAMPLE_STREAM = 0x5A3B  # folded into the seed so snapshot samples never reuse a training key


class NonFiniteLossError(NonFiniteError):
    """Training met a non-finite loss under nan_policy='stop'; the message names the step."""


# --------------------------------------------------------------------------- compiled steps


@dataclasses.dataclass(frozen=True)
class CompiledSteps:
    """The train step jitted over the mesh: `single` takes one batch, `multi` n ([n, B, ...])."""

    single: Callable
    multi: Optional[Callable]  # None when n == 1
    n: int

    def plan(self, step: int, n_iters: int) -> int:
        """Steps in the call starting at `step`: n when aligned and room remains, else 1.

        A pure function of the step, so a resumed run groups steps into calls exactly as the
        uninterrupted run did (and so runs the same XLA programs on the same inputs).
        """
        n = self.n
        return n if (n > 1 and step % n == 0 and step + n <= n_iters) else 1


def compile_steps(config: ml_collections.ConfigDict, exp: experiment.Experiment, mesh,
                  n: int) -> CompiledSteps:
    """The train step of config jitted over `mesh` (state replicated and donated), n per call."""
    step = experiment.get_train_step(config, exp.sde, exp.model, exp.optimizer)
    rep = parallel.replicated(mesh)

    def jit(fn, lead):
        batch = NamedSharding(mesh, P(*([None] * lead), parallel.DATA_AXIS))
        return jax.jit(fn, in_shardings=(rep, batch), out_shardings=(rep, rep), donate_argnums=0)

    multi = jit(train_state.make_multi_step(step, n), 1) if n > 1 else None
    return CompiledSteps(jit(step, 0), multi, n)


# --------------------------------------------------------------------------- loop services


class _Preemption:
    """SIGTERM (single process) or an orbax preemption notice -> checkpoint and stop."""

    def __init__(self, manager):
        self.manager = manager
        self.flag = threading.Event()
        self._previous = None
        # With several processes jax.distributed's preemption service owns SIGTERM and orbax's
        # reached_preemption reports it to every process at the same step.
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self.flag.set())

    def reached(self, step: int) -> bool:
        return self.flag.is_set() or bool(self.manager.reached_preemption(step))

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _crossed(start: int, end: int, every: int) -> bool:
    """True if a multiple of `every` lies in (start, end]."""
    return every > 0 and end // every > start // every


@dataclasses.dataclass
class _Loop:
    """Where the run is: the step reached and the state (on the mesh) after it."""

    step: int
    state: Any
    metrics: Optional[dict] = None  # host metrics of the last call, each [k]


@dataclasses.dataclass(frozen=True)
class _Run:
    """What the loop uses, built once by `train`."""

    config: ml_collections.ConfigDict
    workdir: paths.Path
    mesh: Any
    steps: CompiledSteps
    data: datasets.TrainIterator
    manager: Any
    preemption: _Preemption
    sampler: experiment.Sampler
    scorer: Optional[sample_quality.Scorer]  # quality of snapshot samples, for TensorBoard
    reporter: reporting.Reporter

    @property
    def n_iters(self) -> int:
        return int(self.config.training.n_iters)


def _train_call(run: _Run, loop: _Loop) -> _Loop:
    """One compiled call of k steps on the next k global batches; checks the loss is finite."""
    k = run.steps.plan(loop.step, run.n_iters)
    scaler = datasets.get_data_scaler(run.config.data.centered)
    local = [scaler(next(run.data)["image"]) for _ in range(k)]
    if k == 1:
        batch = parallel.global_batch(local[0], run.mesh)
    else:
        batch = parallel.global_batch(np.stack(local), run.mesh, batch_axis=1)
    state, metrics = (run.steps.multi if k > 1 else run.steps.single)(loop.state, batch)
    metrics = {name: np.atleast_1d(np.asarray(v))
               for name, v in parallel.to_host(metrics).items()}
    _check_finite(metrics, loop.step, run.config.training.nan_policy, run.reporter)
    return _Loop(loop.step + k, state, metrics)


def _check_finite(metrics: dict, start: int, policy: str, reporter: reporting.Reporter) -> int:
    """Raise on the first non-finite step under 'stop'; under 'skip' report and count skips."""
    bad = np.flatnonzero(~metrics["finite"].astype(bool))
    if bad.size == 0:
        return 0
    first = start + int(bad[0])
    if policy == "stop":
        raise NonFiniteLossError(
            f"non-finite loss ({metrics['loss'][bad[0]]}) at step {first}; training stopped and no "
            f"checkpoint was written for it. Lower optim.lr or set training.nan_policy='skip'.")
    reporter.message(f"step {first}: non-finite loss, update skipped ({bad.size} in this call).")
    return int(bad.size)


def _log(run: _Run, start: int, loop: _Loop) -> None:
    """TensorBoard scalars every training.log_freq steps (and at the end)."""
    if not (_crossed(start, loop.step, run.config.training.log_freq) or loop.step == run.n_iters):
        return
    m = loop.metrics
    ok = m["finite"].astype(bool)
    mean = lambda v: float(np.mean(v[ok])) if ok.any() else float("nan")  # noqa: E731
    run.reporter.scalars(loop.step, {
        "training_loss": mean(m["loss"]), "lr": m["lr"][-1], "grad_norm": mean(m["grad_norm"]),
        "steps_per_second": run.reporter.steps_per_second(loop.step)})


def _maybe_checkpoint(run: _Run, start: int, loop: _Loop, preempted: bool) -> None:
    """Save on preemption, at the end, and when a preemption or snapshot multiple was crossed."""
    t = run.config.training
    if (preempted or loop.step == run.n_iters
            or _crossed(start, loop.step, t.snapshot_freq_for_preemption)
            or _crossed(start, loop.step, t.snapshot_freq)):
        checkpoints.save(run.manager, loop.step, loop.state, run.data.get_state())


def _maybe_sample(run: _Run, start: int, loop: _Loop) -> None:
    """Snapshot samples with the EMA parameters at each snapshot and at the end (process 0)."""
    t = run.config.training
    due = _crossed(start, loop.step, t.snapshot_freq) or loop.step == run.n_iters
    if not (t.snapshot_sampling and due and parallel.is_main_process()):
        return
    params, model_state = parallel.to_host((loop.state.params_ema, loop.state.model_state))
    key = jax.random.fold_in(
        jax.random.fold_in(jax.random.PRNGKey(run.config.seed), _SAMPLE_STREAM), loop.step)
    t0 = time.perf_counter()
    x, nfe = run.sampler(key, params, model_state)
    png = images.save_samples(run.workdir / "samples" / f"iter_{loop.step}", "samples", x)
    shown = ""
    if run.scorer is not None:
        scores = sample_quality.score_samples(run.scorer, images.to_uint8(x))
        run.reporter.scalars(loop.step, {f"samples/{k}": v for k, v in scores.items()})
        shown = ", " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()
                                 if not k.startswith("class_"))
    run.reporter.message(f"step {loop.step}: {x.shape[0]} samples ({nfe} NFE, "
                         f"{time.perf_counter() - t0:.1f} s{shown}) -> {png}")


def _restore_or_init(config, exp: experiment.Experiment, manager, mesh,
                     init_from_official: Optional[str], reporter: reporting.Reporter):
    """(state on the mesh, data state): newest readable checkpoint, else official file, else init."""
    manager.reload()
    restored = None
    if manager.all_steps():  # the restore target traces the model's init: seconds on a CPU
        restored = checkpoints.restore_latest(
            manager, experiment.init_state(config, exp, abstract=True),
            sharding=parallel.replicated(mesh), report=reporter.message)
    if restored is not None:
        reporter.message(f"resuming from the checkpoint at step {restored.step} in "
                         f"{manager.directory}")
        return restored.state, restored.data_state
    state = experiment.init_state(config, exp)
    if init_from_official:
        state = experiment.state_from_official(init_from_official, state)
        reporter.message(f"initialised parameters and EMA from the official checkpoint "
                         f"{init_from_official}")
    return parallel.replicate(state, mesh), None


def _check_config(config: ml_collections.ConfigDict, mesh) -> None:
    t = config.training
    parallel.local_batch_size(t.batch_size, mesh, "training.batch_size")
    for name in ("snapshot_freq", "snapshot_freq_for_preemption", "log_freq", "n_iters",
                 "snapshot_num_samples"):
        if int(t[name]) < 1:
            raise InvalidInputError(f"training.{name}: expected a positive integer, got {t[name]}.")
    if t.nan_policy not in train_state.NAN_POLICIES:
        raise InvalidInputError(f"training.nan_policy: expected one of {train_state.NAN_POLICIES}, "
                                f"got {t.nan_policy!r}.")


# --------------------------------------------------------------------------- driver


def _loop(run: _Run, loop: _Loop) -> _Loop:
    """Train until training.n_iters or a preemption notice; returns where it stopped."""
    with run.reporter.progress(run.n_iters, desc="train", unit="step",
                               initial=loop.step) as bar:
        while loop.step < run.n_iters:
            start = loop.step
            loop = _train_call(run, loop)
            bar.update(loop.step - start, {"loss": float(np.mean(loop.metrics["loss"]))})
            _log(run, start, loop)
            preempted = run.preemption.reached(loop.step)
            _maybe_checkpoint(run, start, loop, preempted)
            _maybe_sample(run, start, loop)
            if preempted:
                run.manager.wait_until_finished()
                run.reporter.message(f"preemption notice: checkpoint saved at step {loop.step}; "
                                     f"rerun the same command to resume.")
                break
    return loop


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          init_from_official: Optional[str] = None, async_checkpoints: bool = True) -> int:
    """Train per config in workdir (resuming if it holds checkpoints); returns the last step."""
    exp = experiment.build(config)
    mesh = parallel.make_mesh()
    _check_config(config, mesh)
    data = experiment.train_iterator(config)
    path = workdir_lib.prepare(workdir)
    t = config.training
    with contextlib.closing(data), \
            workdir_lib.stop_on_write_failure(path, lambda: _what_is_kept(path / "checkpoints")), \
            workdir_lock.claim(path, "train", mode="train"):
        # Only once the lock is held: opening a writing manager deletes every unfinished
        # checkpoint directory, which in a live job's workdir is the save it is writing.
        manager = checkpoints.open_manager(path / "checkpoints", snapshot_every=t.snapshot_freq,
                                           async_save=async_checkpoints)
        loop = _train_in(config, exp, mesh, data, path, manager, init_from_official)
    if jax.process_count() > 1:
        print(f"process {jax.process_index()}/{jax.process_count()}: step {loop.step}, local "
              f"params sha256 {parallel.params_digest(loop.state.params)}", flush=True)
    return loop.step


def _what_is_kept(directory: paths.Path) -> str:
    """One sentence on the complete checkpoints left in `directory` (after a failed write)."""
    steps = checkpoints.snapshot_steps(directory)
    if not steps:
        return "no checkpoint had been completed yet."
    return (f"the complete checkpoints are intact (steps {', '.join(map(str, steps))}; newest "
            f"{steps[-1]}).")


def _train_in(config, exp, mesh, data, path, manager, init_from_official) -> _Loop:
    """The body of `train` once the workdir is open; every resource closed on the way out."""
    t = config.training
    with contextlib.ExitStack() as closing:  # each closer runs even when an earlier one raises
        closing.callback(manager.close)
        reporter = reporting.Reporter(path / "tensorboard", enabled=parallel.is_main_process())
        closing.callback(reporter.close)
        closing.callback(manager.wait_until_finished)
        preemption = _Preemption(manager)
        closing.callback(preemption.restore)
        state, data_state = _restore_or_init(config, exp, manager, mesh, init_from_official,
                                             reporter)
        step = int(parallel.to_host(state.step))
        data.set_state(data_state if data_state is not None else {**data.get_state(),
                                                                   "step": step})
        sampler = experiment.get_sampler(config, exp.sde, exp.sampling_eps, exp.model,
                                         int(t.snapshot_num_samples))
        # Snapshot quality only from a network that needs no user file (the digits classifier).
        scorer = sample_quality.get_scorer(config) if (
            t.snapshot_sampling and parallel.is_main_process()
            and sample_quality.feature_net(config) == "digits") else None
        run = _Run(config, path, mesh, compile_steps(config, exp, mesh,
                                                     experiment.n_jitted_steps(config)),
                   data, manager, preemption, sampler, scorer, reporter)
        reporter.start_rate(step)
        return _loop(run, _Loop(step, state))

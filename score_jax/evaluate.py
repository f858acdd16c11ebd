"""Evaluation mode over checkpoints eval.begin_ckpt..end_ckpt: test loss, bits/dim, samples, metrics.

Checkpoint number n is the snapshot at step n * training.snapshot_freq (the official numbering).
Each evaluated checkpoint leaves `<eval_folder>/ckpt_<n>.npz`, written last and atomically, so a
rerun skips the checkpoints already done (resumable like the official evaluator); `summary.json`
collects them. Every test example counts: the last batch is padded and the padding masked out
(the official evaluator dropped the remainder).

With several processes, each reads the checkpoint onto its own devices (outside orbax's
cross-process barriers), evaluates its share of every batch there (no collective inside a compiled
program), and the per-example results meet through the failure-aware `coordination.Coordinator`;
only process 0 writes results.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping, Optional

import jax
import ml_collections
import numpy as np

from score_jax import checkpoints, coordination, datasets, dequantization, experiment, images
from score_jax import likelihood, parallel, paths, plots, reporting, safe_files, sample_quality
from score_jax import sample_rounds
from score_jax import workdir as workdir_lib
from score_jax import workdir_lock
from score_jax.errors import InvalidInputError, MissingFileError

_LOSS_STREAM, _BPD_STREAM, _SAMPLE_STREAM = 0x1055, 0xB9D, 0x5A3C
DEQUANTIZATIONS = ("uniform", "truncated_normal")



class _Context:
    """What every evaluation stage of one run shares."""

    def __init__(self, config, exp: experiment.Experiment, coord: coordination.Coordinator,
                 reporter: reporting.Reporter):
        self.config, self.exp, self.coord, self.reporter = config, exp, coord, reporter
        self.mesh = parallel.make_mesh(jax.local_devices())  # evaluation is per process
        self.scaler = datasets.get_data_scaler(config.data.centered)
        self.scorer = sample_quality.get_scorer(config) if config.eval.enable_sampling else None

    def shard(self, x: np.ndarray) -> jax.Array:
        """A local batch split over this process's devices."""
        return jax.device_put(x, parallel.batch_sharding(self.mesh))

    def gather_examples(self, name: str, values: list[np.ndarray], masks: list[np.ndarray]
                        ) -> np.ndarray:
        """Every real example's value, in data-set order: per-batch local parts of all processes."""
        local = np.stack(values) if values else np.zeros((0, 0))
        parts = self.coord.gather(name, local)
        keep = self.coord.gather(f"{name}_mask", np.stack(masks) if masks else np.zeros((0, 0)))
        per_batch = np.concatenate(parts, axis=1)   # [batches, global batch]
        mask = np.concatenate(keep, axis=1).astype(bool)
        return per_batch[mask]

    def batches(self, seed: int, dequantize: bool):
        """This process's share of every evaluation batch, in order."""
        return experiment.eval_iterator(self.config, seed=seed, dequantize=dequantize)


def _num_batches(config) -> int:
    source = experiment.open_source(config, experiment.eval_split(config))
    return datasets.num_eval_batches(len(source), int(config.eval.batch_size))


# --------------------------------------------------------------------------- per-checkpoint parts


def _per_example_loss_fn(ctx: _Context) -> Callable:
    """Jitted per-example evaluation loss: (keys [B], params, model_state, x [B, ...]) -> [B]."""
    loss_fn = experiment.get_loss_fn(ctx.config, ctx.exp.sde, ctx.exp.model, train=False)

    def per_example(keys, params, model_state, x):
        return jax.vmap(lambda k, xi: loss_fn(k, params, model_state, xi[None])[0])(keys, x)

    rep, batch = parallel.replicated(ctx.mesh), parallel.batch_sharding(ctx.mesh)
    return jax.jit(per_example, in_shardings=(batch, rep, rep, batch), out_shardings=batch)


def eval_loss(ctx: _Context, params, model_state, key) -> float:
    """Mean evaluation loss over every example of the evaluation split."""
    loss_fn = _per_example_loss_fn(ctx)
    values, masks = [], []
    n = _num_batches(ctx.config)
    offset = jax.process_index() * (int(ctx.config.eval.batch_size) // jax.process_count())
    with ctx.reporter.progress(n, desc="test loss", unit="batch") as bar:
        for b, batch in enumerate(ctx.batches(int(ctx.config.seed), False)):
            # Keys of the global batch, so the noise of an example does not depend on the
            # number of processes.
            keys = jax.random.split(jax.random.fold_in(key, b), int(ctx.config.eval.batch_size))
            local = np.asarray(keys)[offset:offset + batch["image"].shape[0]]
            losses = loss_fn(ctx.shard(local), params, model_state,
                             ctx.shard(ctx.scaler(batch["image"])))
            values.append(np.asarray(losses))
            masks.append(batch["mask"])
            bar.update(1)
    losses = ctx.gather_examples("loss", values, masks)
    return float(np.sum(losses, dtype=np.float64) / losses.size)


def bits_per_dim(ctx: _Context, params, model_state, key) -> tuple[np.ndarray, int]:
    """Bits/dim [repeats, N] of every evaluation example (fresh dequantisation per repeat), max NFE."""
    ev = ctx.config.eval
    score_fn = experiment.get_score_fn(ctx.config, ctx.exp.sde, ctx.exp.model, params,
                                       model_state)
    if ev.dequantization not in DEQUANTIZATIONS:
        raise InvalidInputError(f"eval.dequantization: expected one of {DEQUANTIZATIONS}, got "
                                f"{ev.dequantization!r}.")
    uniform = ev.dequantization == "uniform"
    repeats, max_nfe = [], 0
    n = _num_batches(ctx.config) * int(ev.bpd_num_repeats)
    with ctx.reporter.progress(n, desc="bits/dim", unit="batch") as bar:
        for r in range(int(ev.bpd_num_repeats)):
            values, masks = [], []
            for b, batch in enumerate(ctx.batches(int(ctx.config.seed) + 1 + r, uniform)):
                x, correction = batch["image"], 0.0
                if not uniform:  # ScoreFlow's truncated-normal noise, and its density's bound term
                    rng = np.random.default_rng([int(ctx.config.seed), r, b, jax.process_index()])
                    x, log_q = dequantization.dequantize_truncated_normal(images.to_uint8(x), rng)
                    correction = dequantization.bpd_correction(log_q, int(np.prod(x.shape[1:])))
                k = jax.random.fold_in(jax.random.fold_in(key, r), b)
                out = likelihood.bpd(k, ctx.exp.sde, score_fn, ctx.shard(ctx.scaler(x)),
                                     centered=ctx.config.data.centered, rtol=float(ev.bpd_rtol),
                                     atol=float(ev.bpd_atol), error_control=ev.bpd_error_control)
                max_nfe = max(max_nfe, int(out.nfe))
                values.append(np.asarray(out.bpd) + correction)
                masks.append(batch["mask"])
                bar.update(1, {"nfe": int(out.nfe)})
            repeats.append(ctx.gather_examples(f"bpd_{r}", values, masks))
    nfe = max(int(v) for v in ctx.coord.gather("bpd_nfe", np.asarray(max_nfe)))
    return np.stack(repeats), nfe


def sample_and_score(ctx: _Context, params, model_state, out_dir: paths.Path, key,
                     label: str) -> dict[str, Any]:
    """eval.num_samples samples per seed (eval.num_seeds), their grid and their quality scores.

    With several seeds (EDM's protocol) each seed's scores are reported as `<metric>_seed<s>`, and
    `<metric>` is their mean, `<metric>_min` their minimum; one seed writes to out_dir itself.
    """
    ev = ctx.config.eval
    sampler = lambda k, n: experiment.get_sampler(  # noqa: E731
        ctx.config, ctx.exp.sde, ctx.exp.sampling_eps, ctx.exp.model, n)(k, params, model_state)
    seeds = int(ev.num_seeds)
    per_seed = []
    for s in range(seeds):
        seed_dir = out_dir if seeds == 1 else out_dir / f"seed_{s}"
        drawn = sample_rounds.draw_rounds(
            sampler, jax.random.fold_in(key, s), seed_dir, total=int(ev.num_samples),
            per_round=int(ev.batch_size), coord=ctx.coord, reporter=ctx.reporter,
            features=ctx.scorer.features if ctx.scorer else None, desc=f"samples {label}")
        if drawn is None:
            continue
        images.save_samples(seed_dir, "samples", drawn.samples.astype(np.float32) / 255.0)
        scores = sample_quality.scores(ctx.scorer, drawn.features, drawn.logits) \
            if ctx.scorer else {}
        per_seed.append({**scores, "sample_nfe": drawn.nfe})
    if not per_seed:
        return {}
    if seeds == 1:
        return per_seed[0]
    out = {f"{k}_seed{s}": v for s, entry in enumerate(per_seed) for k, v in entry.items()}
    for k in per_seed[0]:
        values = [entry[k] for entry in per_seed]
        out.update({k: float(np.mean(values)), f"{k}_min": float(np.min(values))})
    return out


# --------------------------------------------------------------------------- results files


def _write_summary(eval_dir: paths.Path) -> dict[str, Any]:
    """Rebuild summary.json (the scalars of every ckpt_<n>.npz) from the files in eval_dir."""
    summary = {}
    for f in sorted(eval_dir.glob("ckpt_*.npz"), key=lambda p: p.stem):
        d = safe_files.load_npz(f, "evaluation results")
        summary[f.stem] = {k: float(v) for k, v in d.items() if v.ndim == 0 and v.dtype.kind in "fiub"}
    paths.write_bytes(eval_dir / "summary.json",
                      json.dumps(summary, indent=2, sort_keys=True).encode())
    return summary


_PLOTTED = ("loss", "bpd", "fid", "fd_digits", "is", "is_digits", "kid", "precision", "recall",
            "precision_digits", "recall_digits")


def _plot_summary(path: paths.Path, summary: Mapping[str, Mapping[str, float]]) -> None:
    """PNG of each evaluated quantity against the training step, one panel each."""
    entries = sorted((e for e in summary.values() if "step" in e), key=lambda e: e["step"])
    charts = []
    for name in _PLOTTED:
        points = [(e["step"], e[name]) for e in entries if name in e]
        if points:
            xs, ys = zip(*points)
            charts.append(plots.Chart(title=f"{name} vs training step",
                                      series={name: (list(xs), list(ys))}, xlabel="step",
                                      ylabel=name, log_x=False, log_y=False))
    if charts:
        plots.save_charts(path, charts)


# --------------------------------------------------------------------------- driver


def _checkpoints_to_evaluate(config, manager) -> list[tuple[str, int]]:
    """(label, step) of the requested checkpoints that exist; raises if none does."""
    ev, freq = config.eval, int(config.training.snapshot_freq)
    available = set(manager.all_steps())
    wanted = [(f"ckpt_{n}", n * freq) for n in range(int(ev.begin_ckpt), int(ev.end_ckpt) + 1)]
    found = [(label, step) for label, step in wanted if step in available]
    if not found:
        raise MissingFileError(
            f"no checkpoint to evaluate in {manager.directory}: eval.begin_ckpt..end_ckpt = "
            f"{ev.begin_ckpt}..{ev.end_ckpt} means steps {[s for _, s in wanted]} "
            f"(n * training.snapshot_freq), found steps {sorted(available)}. Train first, or set "
            f"--config.eval.begin_ckpt/end_ckpt.")
    return found


def evaluate_checkpoint(ctx: _Context, state, label: str, step: int,
                        eval_dir: paths.Path) -> dict[str, Any]:
    """All enabled evaluations of one training state; returns and saves its results."""
    ev, say = ctx.config.eval, ctx.reporter.message
    key = jax.random.fold_in(jax.random.PRNGKey(int(ctx.config.seed)), step)
    host = parallel.to_host((state.params_ema, state.model_state))
    params, model_state = jax.device_put(host, parallel.replicated(ctx.mesh))
    results: dict[str, Any] = {"step": step}
    quality: dict[str, Any] = {}
    if ev.enable_loss:
        t0 = time.perf_counter()
        results["loss"] = eval_loss(ctx, params, model_state,
                                    jax.random.fold_in(key, _LOSS_STREAM))
        say(f"{label} (step {step}): test loss {results['loss']:.5g} "
            f"({time.perf_counter() - t0:.1f} s)")
    if ev.enable_bpd:
        t0 = time.perf_counter()
        bpd, nfe = bits_per_dim(ctx, params, model_state, jax.random.fold_in(key, _BPD_STREAM))
        results.update(bpd=float(bpd.mean()), bpd_per_repeat=bpd.mean(axis=1),
                       bpd_per_example=bpd, bpd_nfe=nfe, bpd_seconds=time.perf_counter() - t0)
        say(f"{label} (step {step}): bits/dim {results['bpd']:.4f} over {bpd.shape[1]} examples x "
            f"{bpd.shape[0]} repeats (max NFE {nfe}, {results['bpd_seconds']:.1f} s)")
    if ev.enable_sampling:
        quality = sample_and_score(ctx, *host, eval_dir / label,
                                   jax.random.fold_in(key, _SAMPLE_STREAM), label)
        results.update(quality)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in quality.items() if not k.startswith("class_"))
        say(f"{label} (step {step}): {ev.num_samples} samples x {ev.num_seeds} seed(s) -> "
            f"{eval_dir / label} ({shown})")
    if parallel.is_main_process():
        if ctx.scorer is not None:
            paths.save_npz(eval_dir / f"report_{label}.npz", quality)  # the official report file
        paths.save_npz(eval_dir / f"{label}.npz", results)
    return results


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             eval_folder: str = "eval", *, init_from_official: Optional[str] = None,
             coordinator: Optional[coordination.Coordinator] = None) -> dict[str, Any]:
    """Evaluate the checkpoints of workdir (or an official checkpoint file); returns the summary."""
    exp = experiment.build(config)
    coord = coordinator or coordination.Coordinator()
    reporter = reporting.Reporter(enabled=parallel.is_main_process())
    ctx = _Context(config, exp, coord, reporter)
    parallel.local_batch_size(config.eval.batch_size, parallel.make_mesh(), "eval.batch_size")
    _num_batches(config)  # a missing data set fails here, before any work
    path = workdir_lib.resolve(workdir) if init_from_official else \
        workdir_lib.require_checkpoints(workdir)
    eval_dir = workdir_lib.prepare(path, barrier=coord.barrier) / eval_folder
    kept = lambda: "the results already written are kept, and a rerun skips them."  # noqa: E731
    with workdir_lock.claim(path, workdir_lib.role_name("eval", eval_folder), mode="eval"), \
            workdir_lib.stop_on_write_failure(path, kept):
        return _evaluate_into(ctx, path, eval_dir, init_from_official)


def _evaluate_into(ctx: _Context, path: paths.Path, eval_dir: paths.Path,
                   init_from_official: Optional[str]) -> dict[str, Any]:
    """`evaluate` once the workdir is checked: results under eval_dir; returns the summary."""
    config, exp, coord, reporter = ctx.config, ctx.exp, ctx.coord, ctx.reporter
    if parallel.is_main_process():
        paths.make_dir(eval_dir)
    coord.barrier("eval_dir")
    if init_from_official:
        state = experiment.state_from_official(init_from_official,
                                               experiment.init_state(config, exp))
        evaluate_checkpoint(ctx, state, "official", 0, eval_dir)
    else:
        _evaluate_workdir(ctx, path, eval_dir)
    summary = {}
    if parallel.is_main_process():
        summary = _write_summary(eval_dir)
        _plot_summary(eval_dir / "metrics.png", summary)
    reporter.message(f"evaluation summary -> {eval_dir / 'summary.json'}, curves -> "
                     f"{eval_dir / 'metrics.png'}")
    return summary


def _evaluate_workdir(ctx: _Context, path: paths.Path, eval_dir: paths.Path) -> None:
    """Evaluate every requested checkpoint of path/checkpoints not yet in eval_dir."""
    config = ctx.config
    manager = checkpoints.open_manager(path / "checkpoints",
                                       snapshot_every=config.training.snapshot_freq,
                                       read_only=True, this_process_only=True)
    # Every process reads the whole state onto its own devices.
    sharding = parallel.replicated(ctx.mesh)
    try:
        for label, step in _checkpoints_to_evaluate(config, manager):
            if (eval_dir / f"{label}.npz").exists():
                ctx.reporter.message(f"{label} (step {step}): already evaluated, skipping")
                continue
            ctx.coord.barrier(f"restore_{label}")
            template = experiment.init_state(config, ctx.exp, abstract=True)
            state = checkpoints.restore_step(manager, step, template, sharding=sharding).state
            evaluate_checkpoint(ctx, state, label, step, eval_dir)
            ctx.coord.barrier(f"done_{label}")
    finally:
        manager.close()

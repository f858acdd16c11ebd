"""Evaluation over checkpoints eval.begin_ckpt..end_ckpt: test loss, bits/dim, samples, metrics.

Checkpoint number n is the snapshot at step n * training.snapshot_freq (the official numbering).
Each evaluated checkpoint leaves `<eval_folder>/ckpt_<n>.npz`, written last and atomically, so a
rerun skips the checkpoints already done (resumable like the official evaluator); `summary.json`
collects them. Every test example counts: the last batch is padded and the padding masked out
(the official evaluator dropped the remainder). Work is spread over this process's devices; with
several processes each evaluates its share of every batch and the results are gathered.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Mapping, Optional

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from score_jax import checkpoints, datasets, images, likelihood, parallel, train
from score_jax.models import score as score_lib
from score_jax.errors import InvalidInputError, MissingFileError

_LOSS_STREAM, _BPD_STREAM, _SAMPLE_STREAM = 0x1055, 0xB9D, 0x5A3C

# Sample-quality metrics: name -> fn(samples uint8 [N, H, W, C], config) -> float. Names listed in
# config.eval.sample_metrics are computed on the evaluation samples (FID / IS / KID plug in here).
SAMPLE_METRICS: dict[str, Callable[[np.ndarray, ml_collections.ConfigDict], float]] = {}


def _get(section, field: str, default: Any) -> Any:
    return section.get(field, default) if hasattr(section, "get") else default


def _gather(local: np.ndarray) -> np.ndarray:
    """Concatenate per-process arrays along axis 0, in process order (identity for one process)."""
    if jax.process_count() == 1:
        return local
    return np.asarray(multihost_utils.process_allgather(local, tiled=True))


def _local_mesh():
    """Mesh over this process's devices: evaluation needs no cross-process communication."""
    return parallel.make_mesh(jax.local_devices())


def _shard(x: np.ndarray, mesh) -> jax.Array:
    return jax.device_put(x, NamedSharding(mesh, P(parallel.DATA_AXIS)))


def _eval_iter(config, seed: int, dequantize: bool):
    ev = config.eval
    split = "test" if ev.bpd_dataset == "test" else "train"
    return datasets.eval_iterator(
        train.dataset_name(config), image_size=config.data.image_size,
        global_batch_size=ev.batch_size, data_dir=train.data_dir(config), split=split, seed=seed,
        uniform_dequantization=dequantize, download=bool(_get(config.data, "download", False)))


# --------------------------------------------------------------------------- per-checkpoint parts


def make_loss_fn(config, setup: train.Setup, mesh) -> Callable:
    """Jitted per-example evaluation loss: (keys [B], params, model_state, x [B, ...]) -> [B]."""
    loss_fn = train.build_loss(config, setup.sde, setup.model, train=False)

    def per_example(keys, params, model_state, x):
        return jax.vmap(lambda k, xi: loss_fn(k, params, model_state, xi[None])[0])(keys, x)

    rep, batch = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    return jax.jit(per_example, in_shardings=(batch, rep, rep, batch), out_shardings=batch)


def test_loss(config, loss_fn, params, model_state, mesh, key) -> float:
    """Mean evaluation loss over every example of the evaluation split."""
    scaler = datasets.get_data_scaler(config.data.centered)
    total, count = 0.0, 0
    for b, batch in enumerate(_eval_iter(config, int(config.seed), False)):
        keys = jax.random.split(jax.random.fold_in(key, b), batch["image"].shape[0])
        losses = np.asarray(loss_fn(_shard(np.asarray(keys), mesh), params, model_state,
                                    _shard(scaler(batch["image"]), mesh)))
        mask = batch["mask"]
        losses, mask = _gather(losses), _gather(mask)
        total += float(np.sum(losses[mask], dtype=np.float64))
        count += int(mask.sum())
    return total / count


def bits_per_dim(config, setup: train.Setup, params, model_state, mesh, key
                 ) -> tuple[np.ndarray, int]:
    """Bits/dim [repeats, N] of every evaluation example (fresh dequantisation per repeat), max NFE."""
    ev = config.eval
    scaler = datasets.get_data_scaler(config.data.centered)
    score_fn = score_lib.get_score_fn(setup.sde, setup.model.apply, params, model_state,
                                      continuous=config.training.continuous)
    repeats, max_nfe = [], 0
    for r in range(int(_get(ev, "bpd_num_repeats", 5))):
        values = []
        for b, batch in enumerate(_eval_iter(config, int(config.seed) + 1 + r, True)):
            k = jax.random.fold_in(jax.random.fold_in(key, r), b)
            out = likelihood.bpd(k, setup.sde, score_fn, _shard(scaler(batch["image"]), mesh),
                                 centered=config.data.centered,
                                 rtol=float(_get(ev, "bpd_rtol", 1e-5)),
                                 atol=float(_get(ev, "bpd_atol", 1e-5)))
            max_nfe = max(max_nfe, int(out.nfe))
            bpd, mask = _gather(np.asarray(out.bpd)), _gather(batch["mask"])
            values.append(bpd[mask])
        repeats.append(np.concatenate(values))
    return np.stack(repeats), max_nfe


def write_samples(config, setup: train.Setup, params, model_state, out_dir: pathlib.Path,
                  key) -> np.ndarray:
    """Draw eval.num_samples samples (batches of eval.batch_size) and save them; uint8 [N, ...]."""
    n_total, bs = int(config.eval.num_samples), int(config.eval.batch_size)
    chunks = []
    for i in range(math.ceil(n_total / bs)):
        n = min(bs, n_total - i * bs)
        sampler = train.make_sampler(config, setup.sde, setup.sampling_eps, setup.model, n)
        x, _ = sampler(jax.random.fold_in(key, i), params, model_state)
        chunks.append(x)
    samples = np.concatenate(chunks)
    images.save_samples(out_dir, "samples", samples)
    return images.to_uint8(samples)


def sample_metrics(names, samples: np.ndarray, config) -> dict[str, float]:
    """The SAMPLE_METRICS named in `names`, computed on uint8 samples [N, H, W, C]."""
    unknown = [n for n in names if n not in SAMPLE_METRICS]
    if unknown:
        raise InvalidInputError(f"eval.sample_metrics: unknown metrics {unknown}; available: "
                         f"{sorted(SAMPLE_METRICS)}.")
    return {n: float(SAMPLE_METRICS[n](samples, config)) for n in names}


# --------------------------------------------------------------------------- results files


def _save_npz(path: pathlib.Path, results: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in results.items()})
    tmp.replace(path)


def _summary_entry(results: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-able scalars of a results dict (arrays summarised by their mean)."""
    out = {}
    for k, v in results.items():
        v = np.asarray(v)
        if v.dtype.kind in "fiub":
            out[k] = float(v) if v.ndim == 0 else None
    out = {k: v for k, v in out.items() if v is not None}
    return out


def _write_summary(eval_dir: pathlib.Path) -> dict[str, Any]:
    """Rebuild summary.json from every ckpt_<n>.npz in eval_dir."""
    summary = {}
    for f in sorted(eval_dir.glob("ckpt_*.npz"), key=lambda p: p.stem):
        with np.load(f) as d:
            summary[f.stem] = _summary_entry(dict(d))
    tmp = eval_dir / ".summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    tmp.replace(eval_dir / "summary.json")
    return summary


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


def evaluate_checkpoint(config, setup: train.Setup, state, label: str, step: int,
                        eval_dir: pathlib.Path, mesh, say) -> dict[str, Any]:
    """All enabled evaluations of one training state; returns and saves its results."""
    ev = config.eval
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), step)
    params, model_state = jax.device_put((state.params_ema, state.model_state),
                                         parallel.replicated(mesh))
    results: dict[str, Any] = {"step": step}
    if ev.enable_loss:
        t0 = time.perf_counter()
        loss_fn = make_loss_fn(config, setup, mesh)
        results["loss"] = test_loss(config, loss_fn, params, model_state, mesh,
                                    jax.random.fold_in(key, _LOSS_STREAM))
        say(f"{label} (step {step}): test loss {results['loss']:.5g} "
            f"({time.perf_counter() - t0:.1f} s)")
    if ev.enable_bpd:
        t0 = time.perf_counter()
        bpd, nfe = bits_per_dim(config, setup, params, model_state, mesh,
                                jax.random.fold_in(key, _BPD_STREAM))
        results.update(bpd=float(bpd.mean()), bpd_per_repeat=bpd.mean(axis=1),
                       bpd_per_example=bpd, bpd_nfe=nfe, bpd_seconds=time.perf_counter() - t0)
        say(f"{label} (step {step}): bits/dim {results['bpd']:.4f} over {bpd.shape[1]} examples x "
            f"{bpd.shape[0]} repeats (max NFE {nfe}, {results['bpd_seconds']:.1f} s)")
    if ev.enable_sampling and parallel.is_main_process():
        host = parallel.to_host((state.params_ema, state.model_state))
        samples = write_samples(config, setup, *host, eval_dir / label,
                                jax.random.fold_in(key, _SAMPLE_STREAM))
        results.update(sample_metrics(tuple(_get(ev, "sample_metrics", ())), samples, config))
        say(f"{label} (step {step}): {samples.shape[0]} samples -> {eval_dir / label}")
    if parallel.is_main_process():
        _save_npz(eval_dir / f"{label}.npz", results)
    return results


def evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
             eval_folder: str = "eval", *, init_from_official: Optional[str] = None
             ) -> dict[str, Any]:
    """Evaluate the checkpoints of workdir (or an official checkpoint file); returns the summary."""
    setup = train.build(config)
    mesh = _local_mesh()
    parallel.local_batch_size(config.eval.batch_size, mesh, "eval.batch_size")
    _eval_iter(config, 0, False)  # a missing data set fails here, before any work
    workdir = pathlib.Path(workdir).expanduser().absolute()
    if not init_from_official and not (workdir / "checkpoints").is_dir():
        raise MissingFileError(f"--workdir: {workdir} holds no checkpoints/ directory; train "
                                f"first (--mode train) or pass the workdir of a training run.")
    eval_dir = train.prepare_workdir(workdir) / eval_folder
    if parallel.is_main_process():
        eval_dir.mkdir(exist_ok=True)
    say = (lambda m: print(m, flush=True)) if parallel.is_main_process() else (lambda m: None)
    if init_from_official:
        state = train.state_from_official(init_from_official, train.init_state(config, setup))
        evaluate_checkpoint(config, setup, state, "official", 0, eval_dir, mesh, say)
    else:
        manager = checkpoints.open_manager(workdir / "checkpoints",
                                           snapshot_every=config.training.snapshot_freq,
                                           read_only=True)
        for label, step in _checkpoints_to_evaluate(config, manager):
            if (eval_dir / f"{label}.npz").exists():
                say(f"{label} (step {step}): already evaluated, skipping")
                continue
            template = train.init_state(config, setup, abstract=True)
            state = checkpoints.restore_step(manager, step, template).state
            evaluate_checkpoint(config, setup, state, label, step, eval_dir, mesh, say)
            parallel.sync(f"eval_{label}")
        manager.close()
    summary = _write_summary(eval_dir) if parallel.is_main_process() else {}
    say(f"evaluation summary -> {eval_dir / 'summary.json'}")
    return summary

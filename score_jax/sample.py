"""`--mode sample`: draw from a trained workdir: unconditional, inpaint, colorize, interpolate.

The task is `sample.task`. Inputs (for all but 'unconditional') are the first `sample.num`
examples of the evaluation split, or of `sample.input` (an .npz holding uint8 images [N, H, W, C]
under 'images' or 'samples', or a folder of PNG files). Inpainting masks: `sample.mask` in
{left_half, centre_box, random_pixels} or an .npz / PNG file (nonzero = known). Results go to
`<workdir>/<sample.folder>/<task>/`: `grid.png` with input | masked input | output side by side
(interpolation: one row per pair, endpoints first and last), and the arrays in `result.npz`.
Checkpoint `sample.ckpt` n is the snapshot at step n * training.snapshot_freq (0: the newest).

With several processes each one runs its share of the batches (batch b on process b % P) and
writes it under the output folder; process 0 assembles the results.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_jax import checkpoints, controllable, coordination, datasets, experiment, images
from score_jax import parallel, paths, reporting, safe_files, sample_rounds, sampling
from score_jax import workdir as workdir_lib
from score_jax import workdir_lock
from score_jax.errors import InvalidInputError, MissingFileError

TASKS = ("unconditional", "conditional", "inpaint", "colorize", "interpolate")
_SAMPLE_STREAM = 0x5A3D


# --------------------------------------------------------------------------- inputs


def _read_folder(path: paths.Path) -> np.ndarray:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise MissingFileError(f"sample.input: {path} holds no .png file.")
    arrays = [safe_files.open_image(f, "sample.input image") for f in files]
    arrays = [a[..., None] if a.ndim == 2 else a[..., :3] for a in arrays]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise InvalidInputError(f"sample.input: the PNG files in {path} have different shapes "
                                f"{shapes[:4]}; give images of one size and channel count.")
    return np.stack(arrays)


def read_images(path: str) -> np.ndarray:
    """uint8 images [N, H, W, C] from an .npz ('images' or 'samples') or a folder of PNGs."""
    p = paths.resolve(path)
    if p.is_dir():
        return _read_folder(p)
    if not p.is_file():
        raise MissingFileError(f"sample.input: {p} is neither an .npz file nor a folder of PNGs.")
    d = safe_files.load_npz(p, "sample.input")
    for key in ("images", "samples"):
        if key in d:
            return d[key]
    raise InvalidInputError(f"sample.input: {p} has no array named 'images' or 'samples'.")


def _inputs(config: ml_collections.ConfigDict, shape: tuple[int, int, int]) -> np.ndarray:
    """sample.num uint8 inputs [N, H, W, C] of the data shape."""
    n = int(config.sample.num)
    if config.sample.input:
        x = read_images(config.sample.input)
    else:
        chunks, got = [], 0
        # Every process reads the same inputs; _batched then splits the work.
        for batch in experiment.eval_iterator(config, seed=0, dequantize=False,
                                              batch_size=max(n, 1), whole_batches=True):
            chunks.append(images.to_uint8(batch["image"][batch["mask"]]))
            got += chunks[-1].shape[0]
            if got >= n:
                break
        x = np.concatenate(chunks)
    if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise InvalidInputError(f"sample.input: expected uint8 images [N, {', '.join(map(str, shape))}]"
                                f" (the config's data shape), got {x.dtype} {x.shape}.")
    if x.shape[0] < n:
        raise InvalidInputError(f"sample.num = {n}, but the input holds only {x.shape[0]} images.")
    return x[:n]


def _mask(config: ml_collections.ConfigDict, shape: tuple[int, ...], key) -> np.ndarray:
    kind = config.sample.mask
    if kind in controllable.MASK_KINDS:
        return controllable.make_mask(kind, shape, key, fraction=float(config.sample.mask_fraction))
    if kind.endswith(".npz") and paths.resolve(kind).is_file():
        d = safe_files.load_npz(kind, "sample.mask")
        if not d:
            raise InvalidInputError(f"sample.mask: {kind} holds no array.")
        mask = d["mask"] if "mask" in d else d[sorted(d)[0]]
    elif kind.endswith(".png") and paths.resolve(kind).is_file():
        mask = safe_files.open_image(kind, "sample.mask")
        mask = mask[..., None] if mask.ndim == 2 else mask[..., :shape[-1]]
    else:
        raise InvalidInputError(f"sample.mask: {kind!r} is neither one of "
                                f"{controllable.MASK_KINDS} nor an .npz / .png mask file.")
    mask = (np.asarray(mask) > 0).astype(np.float32)
    try:
        return np.broadcast_to(mask[:1] if mask.ndim == 4 else mask, shape).copy()
    except ValueError:
        raise InvalidInputError(f"sample.mask: {kind} holds a mask of shape {mask.shape}, which does "
                                f"not fit images {shape}; valid kinds are "
                                f"{controllable.MASK_KINDS} or a mask file.") from None


# --------------------------------------------------------------------------- tasks


def _pc_options(config: ml_collections.ConfigDict, eps: float) -> dict[str, Any]:
    s = config.sampling
    return dict(predictor=s.predictor, corrector=s.corrector, snr=s.snr, n_steps=s.n_steps_each,
                eps=eps, denoise=s.noise_removal)


def _task_fn(config, exp, score_fn) -> Callable[[jax.Array, np.ndarray], dict[str, np.ndarray]]:
    """fn(key, uint8 inputs [b, ...]) -> {'input', 'masked', 'output'} arrays in [0, 1]."""
    task, scaler = config.sample.task, datasets.get_data_scaler(config.data.centered)
    inverse = datasets.get_data_inverse_scaler(config.data.centered)
    pc = _pc_options(config, exp.sampling_eps)
    back = lambda x: np.clip(np.asarray(inverse(x)), 0.0, 1.0)  # noqa: E731

    def run(key, x_uint8):
        x = jnp.asarray(scaler(x_uint8.astype(np.float32) / 255.0))
        if task == "inpaint":
            mask = _mask(config, x.shape, jax.random.fold_in(key, 1))
            out, _ = controllable.inpaint(key, exp.sde, score_fn, x, mask, **pc)
            return {"input": back(x), "masked": back(x) * mask, "output": back(out), "mask": mask}
        if task == "colorize":
            gray = controllable.gray_projection(x)
            out, _ = controllable.colorize(key, exp.sde, score_fn, gray, **pc)
            return {"input": back(x), "masked": back(gray), "output": back(out)}
        return _interpolate(config, exp, score_fn, x, back)

    return run


def _interpolate(config, exp, score_fn, x, back) -> dict[str, np.ndarray]:
    """Pairs (x[2i], x[2i+1]) encoded, slerped in latent space, decoded: [pairs, points, ...]."""
    if x.shape[0] % 2:
        raise InvalidInputError(f"sample.task='interpolate' takes pairs: sample.num must be even, "
                                f"got {x.shape[0]}.")
    s = config.sampling
    z, _ = sampling.ode_encode(exp.sde, score_fn, x, rtol=s.ode_rtol, atol=s.ode_atol,
                               eps=exp.sampling_eps)
    z0, z1 = z[0::2], z[1::2]
    ws = jnp.linspace(0.0, 1.0, int(config.sample.num_points))
    flat0, flat1 = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    cos = jnp.sum(flat0 * flat1, -1) / (jnp.linalg.norm(flat0, axis=-1)
                                         * jnp.linalg.norm(flat1, axis=-1))
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))[:, None]
    sin = jnp.maximum(jnp.sin(omega), 1e-7)
    path = (jnp.sin((1 - ws)[None] * omega) / sin)[..., None] * flat0[:, None] + \
        (jnp.sin(ws[None] * omega) / sin)[..., None] * flat1[:, None]  # [pairs, points, D]
    latents = path.reshape((-1,) + x.shape[1:])
    decoded, _ = sampling.ode_decode(exp.sde, score_fn, latents, rtol=s.ode_rtol, atol=s.ode_atol,
                                     eps=exp.sampling_eps)
    out = back(decoded).reshape((z0.shape[0], ws.shape[0]) + x.shape[1:])
    return {"input": back(x), "masked": back(x), "output": out}


# --------------------------------------------------------------------------- driver


def _restore(config, exp, workdir: paths.Path):
    manager = checkpoints.open_manager(workdir / "checkpoints",
                                       snapshot_every=config.training.snapshot_freq,
                                       read_only=True, this_process_only=True)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise MissingFileError(f"--workdir: {workdir / 'checkpoints'} holds no checkpoint; "
                                   f"train first.")
        n = int(config.sample.ckpt)
        step = steps[-1] if n == 0 else n * int(config.training.snapshot_freq)
        if step not in steps:
            raise MissingFileError(f"sample.ckpt = {n} means step {step}, but the checkpoints are "
                                   f"at steps {steps}; set --config.sample.ckpt (0 = newest).")
        template = experiment.init_state(config, exp, abstract=True)
        mesh = parallel.make_mesh(jax.local_devices())
        state = checkpoints.restore_step(manager, step, template,
                                         sharding=parallel.replicated(mesh)).state
        return step, state
    finally:
        manager.close()


def _grid(result: dict[str, np.ndarray], task: str) -> np.ndarray:
    """Tiles in rows: interpolation paths, or input | masked | output per example."""
    if task == "interpolate":
        return result["output"].reshape((-1,) + result["output"].shape[2:]), \
            result["output"].shape[1]
    rows = np.stack([result["input"], result["masked"], result["output"]], axis=1)
    return rows.reshape((-1,) + rows.shape[2:]), 3


def _write(out_dir: paths.Path, result: dict[str, np.ndarray], task: str) -> paths.Path:
    tiles, ncol = _grid(result, task)
    png = out_dir / "grid.png"
    paths.write_bytes(png, images.png_bytes(images.image_grid(tiles, ncol=ncol)))
    paths.save_npz(out_dir / "result.npz", {k: images.to_uint8(v) if k != "mask" else v
                                            for k, v in result.items()})
    return png


def sample(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
           coordinator: Optional[coordination.Coordinator] = None) -> Optional[paths.Path]:
    """Run config.sample.task on the checkpoint of workdir; returns the grid's path (process 0)."""
    task = config.sample.task
    if task not in TASKS:
        raise InvalidInputError(f"sample.task: unknown task {task!r}; valid tasks are {TASKS}.")
    exp = experiment.build(config)
    coord = coordinator or coordination.Coordinator()
    reporter = reporting.Reporter(enabled=parallel.is_main_process())
    path = workdir_lib.require_checkpoints(workdir)
    step, state = _restore(config, exp, path)
    params, model_state = parallel.to_host((state.params_ema, state.model_state))
    out_dir = workdir_lib.prepare(path, barrier=coord.barrier) / config.sample.folder / task
    kept = lambda: "the files already written are kept."  # noqa: E731
    with workdir_lock.claim(path, workdir_lib.role_name("sample", f"{config.sample.folder}/{task}"),
                            mode="sample"), workdir_lib.stop_on_write_failure(path, kept):
        if parallel.is_main_process():
            paths.make_dir(out_dir)
        coord.barrier("sample_dir")
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(int(config.seed)),
                                                    _SAMPLE_STREAM), step)
        if task == "conditional":
            return _conditional(config, exp, params, model_state, path, out_dir, key, coord, reporter)
        if task == "unconditional":
            draw = lambda k, n: experiment.get_sampler(  # noqa: E731
                config, exp.sde, exp.sampling_eps, exp.model, n)(k, params, model_state)
            drawn = sample_rounds.draw_rounds(draw, key, out_dir, total=int(config.sample.num),
                                              per_round=int(config.sample.batch_size), coord=coord,
                                              reporter=reporter, desc="samples")
            if drawn is None:
                return None
            png = images.save_samples(out_dir, "samples", drawn.samples.astype(np.float32) / 255.0)
            reporter.message(f"{drawn.samples.shape[0]} samples of step {step} ({drawn.nfe} NFE each) "
                             f"-> {png}")
            return png
        score_fn = experiment.get_score_fn(config, exp.sde, exp.model, params, model_state)
        result = _batched(_task_fn(config, exp, score_fn), _inputs(config, exp.image_shape), key,
                          out_dir, int(config.sample.batch_size), coord, reporter, task)
        if result is None:
            return None
        png = _write(out_dir, result, task)
        reporter.message(f"{task}: {result['input'].shape[0]} inputs, checkpoint step {step} -> {png}")
        return png


def _batched(run, inputs: np.ndarray, key, out_dir: paths.Path, batch_size: int, coord,
             reporter, task: str) -> Optional[dict[str, np.ndarray]]:
    """run on every batch of inputs (batch b on process b % P), results joined on process 0."""
    count, index = jax.process_count(), jax.process_index()
    parts = out_dir / "parts"
    if index == 0:
        paths.make_dir(parts)
    coord.barrier("sample_parts")
    n_batches = -(-inputs.shape[0] // batch_size)
    mine = [b for b in range(n_batches) if b % count == index]
    with reporter.progress(len(mine), desc=task, unit="batch") as bar:
        for b in mine:
            out = run(jax.random.fold_in(key, b), inputs[b * batch_size:(b + 1) * batch_size])
            paths.save_npz(parts / f"batch_{b}.npz", out)
            bar.update(1)
    coord.barrier("sample_done")
    if index != 0:
        return None
    loaded = [safe_files.load_npz(parts / f"batch_{b}.npz", "sample part")
              for b in range(n_batches)]
    return {k: np.concatenate([d[k] for d in loaded]) for k in loaded[0]}


def _conditional(config, exp, params, model_state, workdir, out_dir, key, coord, reporter):
    """Class-conditional samples, labels 0, 1, ... in turn, guided by the workdir's classifier.

    For the digits they are also classified by the shipped digits classifier (independent of the
    guiding one): the share it labels as asked is reported and saved.
    """
    from score_jax.models import classifier as classifier_lib
    model, clf_params = experiment.restore_classifier(config, workdir)
    logits_fn = classifier_lib.classifier_logits_fn(exp.sde, model.apply, clf_params)
    score_fn = experiment.get_score_fn(config, exp.sde, exp.model, params, model_state)
    inverse = datasets.get_data_inverse_scaler(config.data.centered)
    pc = _pc_options(config, exp.sampling_eps)
    n, bs = int(config.sample.num), int(config.sample.batch_size)
    num_classes = int(jax.eval_shape(logits_fn, jnp.zeros((1,) + exp.image_shape),
                                     jnp.ones((1,))).shape[-1])

    def run(k, labels):
        x, _ = controllable.conditional_sample(k, exp.sde, score_fn, logits_fn, jnp.asarray(labels),
                                               float(config.sample.scale),
                                               shape=(labels.shape[0],) + exp.image_shape, **pc)
        return {"output": np.clip(np.asarray(inverse(x)), 0.0, 1.0), "labels": labels}

    labels = (np.arange(n) % num_classes).astype(np.int32)
    result = _batched(run, labels, key, out_dir, bs, coord, reporter, "conditional")
    if result is None:
        return None
    samples = images.to_uint8(result["output"])
    order = np.argsort(result["labels"], kind="stable")
    png = images.save_samples(out_dir, "samples", result["output"][order])
    extra = {}
    if config.data.dataset == "digits":
        from score_jax.metrics import digits_net
        predicted = np.argmax(digits_net.digits_outputs(samples).logits, -1)
        extra["agreement"] = float(np.mean(predicted == result["labels"]))
        reporter.message(f"conditional: the digits classifier labels {extra['agreement']:.1%} of "
                         f"the samples as the class asked for")
    paths.save_npz(out_dir / "result.npz", {"samples": samples, "labels": result["labels"], **extra})
    reporter.message(f"conditional: {n} samples (scale {config.sample.scale}) -> {png}")
    return png

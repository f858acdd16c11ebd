"""Training loop: a config becomes objects here, then a row of small steps (data, step, log, save).

The train step is compiled once over a device mesh (batch sharded along 'data', state replicated,
state buffers donated). Checkpoints are orbax (score_jax.checkpoints): a run killed at any point and
restarted resumes from the newest complete checkpoint and reproduces the uninterrupted run, because
each step's noise is `fold_in(key, step)` and each batch is a pure function of (seed, step).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import threading
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from score_jax import checkpoints, datasets, images, losses, optim, parallel, reporting
from score_jax import sampling, train_state
from score_jax import sde as sde_lib
from score_jax.models import registry
from score_jax.models import score as score_lib
from score_jax.errors import InvalidInputError, MissingFileError, NonFiniteError, NotWritableError

SDES = {"vpsde": sde_lib.VPSDE, "subvpsde": sde_lib.SubVPSDE, "vesde": sde_lib.VESDE}
SAMPLING_METHODS = ("pc", "ode")
_SAMPLE_STREAM = 0x5A3B  # folded into the seed so snapshot samples never reuse a training key


class NonFiniteLossError(NonFiniteError):
    """Training met a non-finite loss under nan_policy='stop'; the message names the step."""


# --------------------------------------------------------------------------- config -> objects


def _get(section: ml_collections.ConfigDict, field: str, default: Any) -> Any:
    """A config field that older configs may lack."""
    return section.get(field, default) if hasattr(section, "get") else default


def build_sde(config: ml_collections.ConfigDict) -> tuple[sde_lib.SDE, float]:
    """The SDE named by training.sde and its sampling eps (1e-3 VP/sub-VP, 1e-5 VE, as officially)."""
    name = str(config.training.sde).lower()
    if name not in SDES:
        raise InvalidInputError(f"training.sde: unknown SDE {config.training.sde!r}; valid names are "
                         f"{sorted(SDES)}.")
    m = config.model
    if name == "vesde":
        return sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales), 1e-5
    return SDES[name](beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales), 1e-3


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """Per-example data shape (H, W, C)."""
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


def dataset_name(config: ml_collections.ConfigDict) -> str:
    """score_jax data set name of config.data.dataset (official names such as 'CIFAR10' accepted)."""
    name = config.data.dataset
    if name in datasets.OFFICIAL_NAMES:
        return datasets.from_official_name(name, _get(config.data, "category", None))
    return name


def data_dir(config: ml_collections.ConfigDict) -> Optional[str]:
    """config.data.data_dir, None for the tfds default."""
    return _get(config.data, "data_dir", "") or None


def build_optimizer(config: ml_collections.ConfigDict):
    """The optax optimiser of config.optim."""
    o = config.optim
    return optim.get_optimizer(o.optimizer, lr=o.lr, beta1=o.beta1, eps=o.eps,
                               weight_decay=o.weight_decay, warmup=o.warmup,
                               grad_clip=o.grad_clip)


def build_loss(config: ml_collections.ConfigDict, sde: sde_lib.SDE, model, *, train: bool):
    """loss_fn(key, params, model_state, x) of config.training."""
    t = config.training
    return losses.get_loss_fn(sde, model.apply, train=train, reduce_mean=t.reduce_mean,
                              continuous=t.continuous, likelihood_weighting=t.likelihood_weighting,
                              data_shape=image_shape(config))


def n_jitted_steps(config: ml_collections.ConfigDict) -> int:
    """training.n_jitted_steps, with 0 meaning the backend's default."""
    n = int(config.training.n_jitted_steps)
    if n < 0:
        raise InvalidInputError(f"training.n_jitted_steps: expected >= 0 (0 = by backend), got {n}.")
    return n or train_state.default_n_jitted_steps(jax.default_backend())


def check_sampling_config(config: ml_collections.ConfigDict) -> str:
    """Validate sampling.method (and PC names) on the host; returns the method."""
    method = _get(config.sampling, "method", "pc")
    if method not in SAMPLING_METHODS:
        raise InvalidInputError(f"sampling.method: unknown method {method!r}; valid: "
                         f"{list(SAMPLING_METHODS)}.")
    if method == "pc":
        sampling.get_predictor(config.sampling.predictor)
        sampling.get_corrector(config.sampling.corrector)
    return method


def make_sampler(config: ml_collections.ConfigDict, sde: sde_lib.SDE, eps: float, model,
                 n: int) -> Callable[[jax.Array, Any, Any], tuple[np.ndarray, int]]:
    """sample(key, params, model_state) -> (images [n, H, W, C] in [0, 1] on the host, nfe)."""
    method = check_sampling_config(config)
    s = config.sampling
    shape = (n,) + image_shape(config)
    inverse = datasets.get_data_inverse_scaler(config.data.centered)
    continuous = config.training.continuous

    def sample(key, params, model_state):
        score_fn = score_lib.get_score_fn(sde, model.apply, params, model_state,
                                          continuous=continuous)
        if method == "ode":
            x, nfe = sampling.ode_sample(key, sde, score_fn, shape, rtol=s.ode_rtol,
                                         atol=s.ode_atol, eps=eps, denoise=s.noise_removal)
        else:
            x, nfe = sampling.pc_sample(key, sde, score_fn, shape, predictor=s.predictor,
                                        corrector=s.corrector, snr=s.snr, n_steps=s.n_steps_each,
                                        eps=eps, denoise=s.noise_removal,
                                        probability_flow=s.probability_flow)
        return np.clip(np.asarray(inverse(x)), 0.0, 1.0), int(nfe)

    return sample


@dataclasses.dataclass(frozen=True)
class Setup:
    """Objects built from a config, shared by training and evaluation."""

    sde: sde_lib.SDE
    sampling_eps: float
    model: Any
    optimizer: Any
    image_shape: tuple[int, int, int]


def build(config: ml_collections.ConfigDict) -> Setup:
    """Validate the config and turn it into the model, SDE and optimiser (no data, no files)."""
    sde, eps = build_sde(config)
    model = registry.get_model(config)
    check_sampling_config(config)
    return Setup(sde, eps, model, build_optimizer(config), image_shape(config))


def init_state(config: ml_collections.ConfigDict, setup: Setup, *,
               abstract: bool = False) -> train_state.TrainState:
    """Step-0 training state from config.seed (the official init: model key split from the seed).

    Compiled, because an eager flax init of a U-Net takes tens of seconds on a small CPU; with
    `abstract` only shapes and dtypes (a restore target) are computed.
    """
    def make() -> train_state.TrainState:
        key = jax.random.PRNGKey(config.seed)
        key, init_key = jax.random.split(key)
        variables = dict(registry.init_model(init_key, setup.model, config.data.image_size,
                                             config.data.num_channels))
        params = variables.pop("params")
        return train_state.init_train_state(key, params, setup.optimizer, model_state=variables)

    return jax.eval_shape(make) if abstract else jax.jit(make)()


def state_from_official(path: str, template: train_state.TrainState) -> train_state.TrainState:
    """Training state whose params / EMA / model state (not optimiser) come from an official file."""
    from score_jax import official_checkpoint
    ckpt = official_checkpoint.load_official_checkpoint(path, template.params)
    cast = lambda tree, like: jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, b.dtype), tree,
                                                     like)
    return template.replace(params=cast(ckpt.params, template.params),
                            params_ema=cast(ckpt.params_ema, template.params_ema),
                            model_state=ckpt.model_state or template.model_state)


# --------------------------------------------------------------------------- workdir


def prepare_workdir(workdir: str | os.PathLike) -> pathlib.Path:
    """Create the workdir if needed and check it is writable; never removes anything."""
    path = pathlib.Path(workdir).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise InvalidInputError(f"--workdir: {path} exists and is not a directory; choose another "
                                 f"path.")
    if not path.parent.is_dir():
        raise MissingFileError(f"--workdir: the parent directory {path.parent} does not exist; "
                                f"create it first or choose another workdir.")
    if jax.process_index() == 0:
        try:
            path.mkdir(exist_ok=True)
            probe = path / f".write_probe_{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:  # EACCES, EPERM, EROFS: all mean "cannot write here"
            raise NotWritableError(f"--workdir: {path} is not writable ({e.strerror}); choose a "
                                  f"directory you can write to.") from None
    parallel.sync("workdir")
    return path


# --------------------------------------------------------------------------- compiled steps


def _batch_spec(ndim_lead: int) -> P:
    """PartitionSpec sharding the batch axis after `ndim_lead` leading step axes."""
    return P(*([None] * ndim_lead), parallel.DATA_AXIS)


def compile_steps(config: ml_collections.ConfigDict, setup: Setup, mesh, n: int):
    """(single step, n-step call) jitted over the mesh, state donated; n-step is None when n == 1."""
    loss_fn = build_loss(config, setup.sde, setup.model, train=True)
    step = train_state.make_train_step(loss_fn, setup.optimizer, ema_rate=config.model.ema_rate,
                                       ema_warmup=_get(config.model, "ema_warmup", False),
                                       nan_policy=_get(config.training, "nan_policy", "stop"))
    rep = parallel.replicated(mesh)

    def jit(fn, lead):
        return jax.jit(fn, in_shardings=(rep, NamedSharding(mesh, _batch_spec(lead))),
                       out_shardings=(rep, rep), donate_argnums=0)

    multi = jit(train_state.make_multi_step(step, n), 1) if n > 1 else None
    return jit(step, 0), multi


# --------------------------------------------------------------------------- loop helpers


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


def _plan(step: int, n: int, n_iters: int) -> int:
    """Steps in the call starting at `step`: n when aligned and room remains, else 1.

    A pure function of the step, so a resumed run groups steps into calls exactly as the
    uninterrupted run did.
    """
    return n if (n > 1 and step % n == 0 and step + n <= n_iters) else 1


def _crossed(start: int, end: int, every: int) -> bool:
    """True if a multiple of `every` lies in (start, end]."""
    return every > 0 and end // every > start // every


def _next_batches(it, k: int, scaler, mesh) -> jax.Array:
    """k global batches, scaled: [B, H, W, C] if k == 1, else [k, B, H, W, C]."""
    local = [scaler(next(it)["image"]) for _ in range(k)]
    if k == 1:
        return parallel.global_batch(local[0], mesh)
    return parallel.global_batch(np.stack(local), mesh, batch_axis=1)


def _host_metrics(metrics: dict) -> dict[str, np.ndarray]:
    """Metrics of one call on the host, each [k]."""
    return {k: np.atleast_1d(np.asarray(v)) for k, v in parallel.to_host(metrics).items()}


def _check_finite(metrics: dict, start: int, policy: str, report) -> int:
    """Raise on the first non-finite step under 'stop'; under 'skip' report and count skips."""
    bad = np.flatnonzero(~metrics["finite"].astype(bool))
    if bad.size == 0:
        return 0
    first = start + int(bad[0])
    if policy == "stop":
        raise NonFiniteLossError(
            f"non-finite loss ({metrics['loss'][bad[0]]}) at step {first}; training stopped and no "
            f"checkpoint was written for it. Lower optim.lr or set training.nan_policy='skip'.")
    report(f"step {first}: non-finite loss, update skipped ({bad.size} in this call).")
    return int(bad.size)


def _log(reporter: reporting.Reporter, step: int, metrics: dict, rate: float) -> None:
    ok = metrics["finite"].astype(bool)
    mean = lambda v: float(np.mean(v[ok])) if ok.any() else float("nan")
    reporter.scalars(step, {"training_loss": mean(metrics["loss"]), "lr": metrics["lr"][-1],
                            "grad_norm": mean(metrics["grad_norm"]), "steps_per_second": rate})


def _save(manager, step: int, state, it) -> None:
    checkpoints.save(manager, step, state, it.get_state())


def _write_samples(sampler, workdir: pathlib.Path, config, step: int, state, reporter) -> None:
    """Sample with the EMA parameters (host copy, one device) and write PNG + .npz (process 0)."""
    if not parallel.is_main_process():
        return
    params, model_state = parallel.to_host((state.params_ema, state.model_state))
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), _SAMPLE_STREAM),
                             step)
    t0 = time.perf_counter()
    x, nfe = sampler(key, params, model_state)
    png = images.save_samples(workdir / "samples" / f"iter_{step}", "samples", x)
    reporter.message(f"step {step}: {x.shape[0]} samples ({nfe} NFE, "
                     f"{time.perf_counter() - t0:.1f} s) -> {png}")


def _restore_or_init(config, setup: Setup, manager, mesh, init_from_official, report):
    """(state on the mesh, data state): newest readable checkpoint, else official file, else init."""
    restored = checkpoints.restore_latest(manager, init_state(config, setup, abstract=True),
                                          sharding=parallel.replicated(mesh), report=report)
    if restored is not None:
        report(f"resuming from the checkpoint at step {restored.step} in {manager.directory}")
        return restored.state, restored.data_state
    template = init_state(config, setup)
    if init_from_official:
        template = state_from_official(init_from_official, template)
        report(f"initialised parameters and EMA from the official checkpoint {init_from_official}")
    return parallel.replicate(template, mesh), None


# --------------------------------------------------------------------------- driver


def train(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
          init_from_official: Optional[str] = None, async_checkpoints: bool = True) -> int:
    """Train per config in workdir (resuming if it holds checkpoints); returns the last step."""
    setup = build(config)
    mesh = parallel.make_mesh()
    t = config.training
    parallel.local_batch_size(t.batch_size, mesh, "training.batch_size")
    for name in ("snapshot_freq", "snapshot_freq_for_preemption", "log_freq", "n_iters"):
        if int(t[name]) < 1:
            raise InvalidInputError(f"training.{name}: expected a positive integer, got {t[name]}.")
    n = n_jitted_steps(config)
    n_iters = int(t.n_iters)
    policy = _get(t, "nan_policy", "stop")
    it = datasets.train_iterator(
        dataset_name(config), image_size=config.data.image_size, global_batch_size=t.batch_size,
        seed=int(config.seed), data_dir=data_dir(config), random_flip=config.data.random_flip,
        uniform_dequantization=config.data.uniform_dequantization,
        download=bool(_get(config.data, "download", False)), prefetch=2)
    workdir = prepare_workdir(workdir)
    manager = checkpoints.open_manager(workdir / "checkpoints", snapshot_every=t.snapshot_freq,
                                       async_save=async_checkpoints)
    main = parallel.is_main_process()
    say = (lambda m: print(m, flush=True)) if main else (lambda m: None)
    state, data_state = _restore_or_init(config, setup, manager, mesh, init_from_official, say)
    step = int(parallel.to_host(state.step))
    it.set_state(data_state if data_state is not None else {**it.get_state(), "step": step})
    single, multi = compile_steps(config, setup, mesh, n)
    scaler = datasets.get_data_scaler(config.data.centered)
    sampler = make_sampler(config, setup.sde, setup.sampling_eps, setup.model,
                           int(_get(t, "snapshot_num_samples", 64)))
    reporter = reporting.Reporter(workdir / "tensorboard", total=n_iters, initial=step,
                                  enabled=main)
    preemption = _Preemption(manager)
    try:
        step, state = _loop(config, workdir, state, step, n, n_iters, policy, it, mesh, single, multi,
                     scaler, sampler, manager, reporter, preemption)
    finally:
        preemption.restore()
        manager.wait_until_finished()
        manager.close()
        reporter.close()
        it.close()
    if jax.process_count() > 1:
        print(f"process {jax.process_index()}/{jax.process_count()}: step {step}, local params "
              f"sha256 {params_digest(state.params)}", flush=True)
    return step


def params_digest(params: Any) -> str:
    """sha256 of this process's replica of the parameters (to check replicas agree across hosts)."""
    import hashlib
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf.addressable_data(0))).tobytes())
    return h.hexdigest()


def _loop(config, workdir, state, step, n, n_iters, policy, it, mesh, single, multi, scaler,
          sampler, manager, reporter, preemption) -> tuple[int, Any]:
    """The training loop proper; returns the step reached and the state."""
    t = config.training
    while step < n_iters:
        k = _plan(step, n, n_iters)
        batch = _next_batches(it, k, scaler, mesh)
        state, metrics = (multi if k > 1 else single)(state, batch)
        metrics = _host_metrics(metrics)
        _check_finite(metrics, step, policy, reporter.message)
        start, step = step, step + k
        reporter.advance(k, {"loss": float(np.mean(metrics["loss"]))})
        if _crossed(start, step, t.log_freq) or step == n_iters:
            _log(reporter, step, metrics, reporter.steps_per_second(step))
        preempted = preemption.reached(step)
        if (preempted or step == n_iters or _crossed(start, step, t.snapshot_freq_for_preemption)
                or _crossed(start, step, t.snapshot_freq)):
            _save(manager, step, state, it)
        if t.snapshot_sampling and (_crossed(start, step, t.snapshot_freq) or step == n_iters):
            _write_samples(sampler, workdir, config, step, state, reporter)
        if preempted:
            manager.wait_until_finished()
            reporter.message(f"preemption notice: checkpoint saved at step {step}; rerun the same "
                             f"command to resume.")
            break
    return step, state

"""The one place a config becomes objects: SDE, model, optimiser, loss, sampler, data, states.

Every runtime mode (train, evaluate, sample, ...) builds what it needs here, so a config field is
read in one place only, and always from the config: the base configs hold every field, with its
default, and nothing here falls back on a value of its own. Nothing here touches the file system
except the data sets (and an official checkpoint or a trained classifier when asked).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_jax import (checkpoints, datasets, edm, losses, optim, parallel, paths, sampling,
                       train_state)
from score_jax import sde as sde_lib
from score_jax.errors import InvalidInputError, MissingFileError
from score_jax.models import classifier as classifier_models
from score_jax.models import registry
from score_jax.models import score as score_lib

Config = ml_collections.ConfigDict
# The official sampling eps: where the reverse-time solve stops.
SAMPLING_EPS = {"vesde": 1e-5, "vpsde": 1e-3, "subvpsde": 1e-3}
SAMPLING_METHODS = ("pc", "ode") + tuple(sampling.FAST_SOLVERS)
# Config fields of the few-step solvers (sampling.<field>) -> fast_sample option; an empty value
# ('' or 0) keeps the solver's own default.
_FAST_OPTIONS = {"order": "order", "dpm_method": "method", "skip_type": "skip_type", "eta": "eta",
                 "s_churn": "s_churn", "s_tmin": "s_min", "s_tmax": "s_max", "s_noise": "s_noise",
                 "rel_tol": "rel_tol", "abs_tol": "abs_tol", "rho": "rho",
                 "prediction": "prediction", "unipc_variant": "variant", "grid": "grid"}
# Sampler(key, params, model_state) -> (images [n, H, W, C] in [0, 1] on the host, nfe).
Sampler = Callable[[jax.Array, Any, Any], tuple[np.ndarray, int]]


# --------------------------------------------------------------------------- maths objects


def get_sde(config: Config) -> tuple[sde_lib.SDE, float]:
    """The SDE named by training.sde and its sampling eps (1e-3 VP/sub-VP, 1e-5 VE, as officially)."""
    m = config.model
    sde = sde_lib.get_sde(config.training.sde, sigma_min=m.sigma_min, sigma_max=m.sigma_max,
                          beta_min=m.beta_min, beta_max=m.beta_max, num_scales=m.num_scales)
    return sde, SAMPLING_EPS[config.training.sde.lower()]


def image_shape(config: Config) -> tuple[int, int, int]:
    """Per-example data shape (H, W, C)."""
    return (config.data.image_size, config.data.image_size, config.data.num_channels)


def get_optimizer(config: Config):
    """The optax optimiser of config.optim."""
    o = config.optim
    return optim.get_optimizer(o.optimizer, lr=o.lr, beta1=o.beta1, eps=o.eps,
                               weight_decay=o.weight_decay, warmup=o.warmup,
                               grad_clip=o.grad_clip)


def get_preconditioning(config: Config) -> Optional[edm.Preconditioning]:
    """EDM's preconditioning of the network (model.preconditioning 'edm'), or None ('none')."""
    return edm.get_preconditioning(config.model.preconditioning, config.model.sigma_data)


def _check_edm_network(config: Config) -> None:
    """One line when EDM's c_noise = ln(sigma) / 4 cannot be the network's label (it may be < 0)."""
    m = config.model
    if m.preconditioning != "edm":
        return
    if m.name not in ("ncsnpp", "ddpm"):
        raise InvalidInputError(f"model.preconditioning='edm' needs a network with a positional noise "
                                f"embedding ('ncsnpp' as DDPM++, or 'ddpm'), got model.name={m.name!r}.")
    if m.name == "ncsnpp" and (m.scale_by_sigma or m.embedding_type != "positional"):
        raise InvalidInputError("model.preconditioning='edm' feeds the network c_noise = ln(sigma) / 4, "
                                "which NCSN++'s Fourier embedding and sigma scaling read as a sigma; "
                                "set model.embedding_type='positional' and model.scale_by_sigma=False.")


def get_loss_fn(config: Config, sde: sde_lib.SDE, model, *, train: bool) -> losses.LossFn:
    """loss_fn(key, params, model_state, x [B, H, W, C]) of config.training."""
    t = config.training
    return losses.get_loss_fn(sde, model.apply, train=train, reduce_mean=t.reduce_mean,
                              continuous=t.continuous, likelihood_weighting=t.likelihood_weighting,
                              importance_weighting=t.importance_weighting,
                              data_shape=image_shape(config), loss=t.loss or None,
                              precond=get_preconditioning(config), p_mean=t.p_mean,
                              p_std=t.p_std)


def get_train_step(config: Config, sde: sde_lib.SDE, model, optimizer) -> train_state.StepFn:
    """The pure train step step(state, x) -> (state, metrics) of config (loss, EMA, NaN policy)."""
    return train_state.make_train_step(get_loss_fn(config, sde, model, train=True), optimizer,
                                       ema_rate=config.model.ema_rate,
                                       ema_warmup=config.model.ema_warmup,
                                       nan_policy=config.training.nan_policy)


def n_jitted_steps(config: Config) -> int:
    """training.n_jitted_steps, with 0 meaning the backend's default."""
    n = int(config.training.n_jitted_steps)
    if n < 0:
        raise InvalidInputError(f"training.n_jitted_steps: expected >= 0 (0 = by backend), got {n}.")
    return n or train_state.default_n_jitted_steps(jax.default_backend())


def check_sampling(config: Config) -> str:
    """Validate sampling.method (and the PC names) on the host; returns the method."""
    method = config.sampling.method
    if method not in SAMPLING_METHODS:
        raise InvalidInputError(f"sampling.method: unknown method {method!r}; valid: "
                                f"{list(SAMPLING_METHODS)}.")
    if method == "pc":
        sampling.get_predictor(config.sampling.predictor)
        sampling.get_corrector(config.sampling.corrector)
    if method in sampling.FAST_SOLVERS:
        fast_options(config)
    return method


def fast_options(config: Config) -> dict[str, Any]:
    """The options of sampling.method's few-step solver set in config.sampling (non-empty ones)."""
    s = config.sampling
    defaults = sampling.FAST_SOLVERS[s.method][0]
    options = {}
    for field, option in _FAST_OPTIONS.items():
        value = s[field]
        if isinstance(value, (tuple, list)):
            try:
                value = tuple(float(v) for v in value) or None   # () = no grid of the user's
            except (TypeError, ValueError):
                raise InvalidInputError(f"sampling.{field}: expected numbers, got {value!r}.") from None
        if value in ("", 0, 0.0, None) or option not in defaults:
            continue
        options[option] = value
    return options


def get_sampler(config: Config, sde: sde_lib.SDE, eps: float, model, n: int) -> Sampler:
    """sample(key, params, model_state) -> (images [n, H, W, C] in [0, 1] on the host, nfe)."""
    method = check_sampling(config)
    s = config.sampling
    shape = (n,) + image_shape(config)
    inverse = datasets.get_data_inverse_scaler(config.data.centered)
    continuous = config.training.continuous
    precond = get_preconditioning(config)

    def sample(key, params, model_state):
        score_fn = score_lib.get_score_fn(sde, model.apply, params, model_state,
                                          continuous=continuous, precond=precond)
        if method == "ode":
            x, nfe = sampling.ode_sample(key, sde, score_fn, shape, rtol=s.ode_rtol,
                                         atol=s.ode_atol, eps=eps, denoise=s.noise_removal)
        elif method in sampling.FAST_SOLVERS:
            x, nfe = sampling.fast_sample(key, sde, score_fn, shape, solver=method, nfe=s.nfe,
                                          eps=eps, denoise=s.noise_removal,
                                          **fast_options(config))
        else:
            x, nfe = sampling.pc_sample(key, sde, score_fn, shape, predictor=s.predictor,
                                        corrector=s.corrector, snr=s.snr, n_steps=s.n_steps_each,
                                        eps=eps, denoise=s.noise_removal,
                                        probability_flow=s.probability_flow)
        return np.clip(np.asarray(inverse(x)), 0.0, 1.0), int(nfe)

    return sample


def _check_fast_plan(config: Config, sde: sde_lib.SDE, eps: float) -> None:
    """Lay out the few-step solver's steps once, so a bad option or grid fails before training."""
    s = config.sampling
    if s.method in sampling.FAST_SOLVERS and sampling.FAST_SOLVERS[s.method][1] is not None:
        sampling.build_plan(sde, s.method, int(s.nfe), eps, bool(s.noise_removal),
                            **fast_options(config))


def get_score_fn(config: Config, sde: sde_lib.SDE, model, params, model_state):
    """score_fn(x [B, H, W, C], t [B]) of a trained network (a pytree: no recompiles)."""
    return score_lib.get_score_fn(sde, model.apply, params, model_state,
                                  continuous=config.training.continuous,
                                  precond=get_preconditioning(config))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """The objects every mode shares, built from a config by `build` (no data, no files)."""

    sde: sde_lib.SDE
    sampling_eps: float
    model: Any                   # flax module
    optimizer: Any               # optax GradientTransformation
    image_shape: tuple[int, int, int]


def build(config: Config) -> Experiment:
    """Validate the config and turn it into the SDE, model and optimiser."""
    sde, eps = get_sde(config)
    score_lib.check_preconditioning(sde, get_preconditioning(config))
    _check_edm_network(config)
    model = registry.get_model(config)
    check_sampling(config)
    _check_fast_plan(config, sde, eps)
    return Experiment(sde, eps, model, get_optimizer(config), image_shape(config))


# --------------------------------------------------------------------------- states


def init_state(config: Config, exp: Experiment, *,
               abstract: bool = False) -> train_state.TrainState:
    """Step-0 training state from config.seed (the official init: model key split from the seed).

    Compiled, because an eager flax init of a U-Net takes tens of seconds on a small CPU; with
    `abstract` only shapes and dtypes (a restore target) are computed.
    """
    def make() -> train_state.TrainState:
        key = jax.random.PRNGKey(config.seed)
        key, init_key = jax.random.split(key)
        variables = dict(registry.init_model(init_key, exp.model, config.data.image_size,
                                             config.data.num_channels))
        params = variables.pop("params")
        return train_state.init_train_state(key, params, exp.optimizer, model_state=variables)

    return jax.eval_shape(make) if abstract else jax.jit(make)()


def state_from_official(path: str, template: train_state.TrainState) -> train_state.TrainState:
    """Training state whose params / EMA / model state (not optimiser) come from an official file."""
    from score_jax import official_checkpoint  # msgpack reader, needed only on request
    ckpt = official_checkpoint.load_official_checkpoint(path, template.params)

    def cast(tree, like):
        return jax.tree_util.tree_map(lambda a, b: jnp.asarray(a, b.dtype), tree, like)

    return template.replace(params=cast(ckpt.params, template.params),
                            params_ema=cast(ckpt.params_ema, template.params_ema),
                            model_state=ckpt.model_state or template.model_state)


# --------------------------------------------------------------------------- classifier

_CLASSIFIER_STREAM = 0xC1A5  # folded into the seed: the classifier never reuses the model's keys


def get_classifier(config: Config):
    """The flax classifier named by classifier.name."""
    name = config.classifier.name
    if name not in classifier_models.CLASSIFIERS:
        raise InvalidInputError(f"classifier.name: unknown classifier {name!r}; valid names are "
                                f"{sorted(classifier_models.CLASSIFIERS)}.")
    return classifier_models.CLASSIFIERS[name]()


def classifier_init_state(config: Config, model, optimizer, *,
                          abstract: bool = False) -> train_state.TrainState:
    """Step-0 classifier state from config.seed (compiled; `abstract`: shapes only)."""
    shape = (1,) + image_shape(config)

    def make():
        key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), _CLASSIFIER_STREAM)
        key, init_key = jax.random.split(key)
        params = model.init(init_key, jnp.zeros(shape), jnp.ones((1,)))["params"]
        return train_state.init_train_state(key, params, optimizer)

    return jax.eval_shape(make) if abstract else jax.jit(make)()


def classifier_optimizer(config: Config):
    """Adam at classifier.lr."""
    return optim.get_optimizer("Adam", lr=float(config.classifier.lr))


def classifier_dir(workdir: paths.Path) -> paths.Path:
    """Where the classifier of a workdir is kept."""
    return workdir / "classifier" / "checkpoints"


def restore_classifier(config: Config, workdir: paths.Path) -> tuple[Any, Any]:
    """(model, EMA parameters) of the classifier trained in workdir (this process only)."""
    model = get_classifier(config)
    manager = checkpoints.open_manager(classifier_dir(workdir), snapshot_every=1, read_only=True,
                                       this_process_only=True)
    try:
        steps = sorted(manager.all_steps())
        if not steps:
            raise MissingFileError(f"no classifier in {classifier_dir(workdir)}: train one first "
                                   f"with --mode train_classifier on this workdir.")
        state = checkpoints.restore_step(manager, steps[-1],
                                         classifier_init_state(config, model, classifier_optimizer(config),
                                                    abstract=True)).state
    finally:
        manager.close()
    return model, parallel.to_host(state.params_ema)


# --------------------------------------------------------------------------- data


def dataset_name(config: Config) -> str:
    """score_jax data set name of config.data.dataset (official names such as 'CIFAR10' accepted)."""
    name = config.data.dataset
    if name == "LSUN":
        return datasets.from_official_name(name, config.data.category)
    if name in datasets.OFFICIAL_NAMES:
        return datasets.from_official_name(name)
    return name


def _open_kwargs(config: Config) -> dict[str, Any]:
    """The keyword arguments of datasets.open_source that come from config.data."""
    d = config.data
    return dict(tfrecords_path=d.tfrecords_path or None, download=bool(d.download),
                path=d.path or None, eval_fraction=float(d.eval_fraction))


def _source_kwargs(config: Config) -> dict[str, Any]:
    d = config.data
    return dict(image_size=d.image_size, data_dir=d.data_dir or None, **_open_kwargs(config))


def open_source(config: Config, split: str) -> Sequence[dict]:
    """Random-access examples of a split ('train', 'eval', ...) of config's data set.

    Raises as datasets.open_source; for a folder also when its channels are not
    data.num_channels (before anything is written).
    """
    source = datasets.open_source(dataset_name(config), split, config.data.data_dir or None,
                                  **_open_kwargs(config))
    _check_channels(config, source)
    return source


def _check_channels(config: Config, source: Sequence[dict]) -> None:
    """One line when a folder's images do not have data.num_channels channels."""
    if dataset_name(config) != "folder" or not len(source):
        return
    channels = np.asarray(source[0]["image"]).shape[-1]
    if channels != config.data.num_channels:
        kind = "grayscale" if channels == 1 else "colour"
        raise InvalidInputError(
            f"data.num_channels is {config.data.num_channels} but the images of data.path "
            f"{config.data.path!r} are {kind} ({channels} channel{'s' * (channels > 1)}); set "
            f"--config.data.num_channels={channels}.")


def eval_split(config: Config) -> str:
    """The split eval.bpd_dataset names: 'test' is the data set's evaluation split (LSUN: validation)."""
    choice = config.eval.bpd_dataset
    if choice not in ("test", "train"):
        raise InvalidInputError(f"eval.bpd_dataset: expected 'test' or 'train', got {choice!r}.")
    return "eval" if choice == "test" else "train"


def train_iterator(config: Config, *, prefetch: int = 2,
                   batch_size: Optional[int] = None) -> datasets.TrainIterator:
    """This process's endless training batches of config (seeded by config.seed, resumable)."""
    data = datasets.train_iterator(
        dataset_name(config), global_batch_size=batch_size or config.training.batch_size,
        seed=int(config.seed), random_flip=config.data.random_flip,
        uniform_dequantization=config.data.uniform_dequantization, prefetch=prefetch,
        workers=config.data.num_workers, **_source_kwargs(config))
    _check_channels(config, data.pipeline.source)
    return data


def eval_iterator(config: Config, *, seed: int, dequantize: bool, split: Optional[str] = None,
                  batch_size: Optional[int] = None,
                  whole_batches: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """One pass over this process's share of the evaluation split (eval_split), padded and masked.

    With `whole_batches` every process reads every example (inputs that all processes share).
    """
    shares = dict(process_index=0, process_count=1) if whole_batches else {}
    return datasets.eval_iterator(
        dataset_name(config), global_batch_size=batch_size or config.eval.batch_size,
        split=split or eval_split(config), seed=seed, uniform_dequantization=dequantize,
        **shares, **_source_kwargs(config))

"""Score-matching losses: continuous denoising score matching and the discrete SMLD and DDPM losses.

Every loss here is `loss_fn(key, params, model_state, x) -> (loss, new_model_state)` for one global
batch `x [B, ...]`: a pure function with no optimiser state and no collectives, so the train step
can differentiate it and the runtime layer can shard it. Conventions follow the official score_sde
`losses.py`, including its per-example reduction: the mean over data dimensions when `reduce_mean`,
otherwise half the sum (`0.5 * sum`, so the summed loss is the usual 1/2 ||.||^2 of score matching).

References:
  Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations",
  ICLR 2021, Eq. (7) and Appendix C.
  Song et al., "Maximum Likelihood Training of Score-Based Diffusion Models", NeurIPS 2021
  (likelihood weighting lambda(t) = g(t)^2).
  Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution" (SMLD), 2019.
  Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022,
  Eq. (2) and Table 1 (the 'edm' loss).
  Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (DDPM L_simple).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import math

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import checks, edm
from score_jax import sde as sde_lib
from score_jax.models import score as mscore
from score_jax.errors import InvalidInputError

Array = jax.Array
ApplyFn = Callable[..., Any]
LossFn = Callable[[Array, Any, Any, Array], tuple[Array, Any]]


def _reduce(per_element: Array, reduce_mean: bool) -> Array:
    """Per-example reduction [B, ...] -> [B]: mean over data dims, or the official 0.5 * sum."""
    flat = per_element.reshape(per_element.shape[0], -1)
    return jnp.mean(flat, axis=1) if reduce_mean else 0.5 * jnp.sum(flat, axis=1)


def _check_batch(x: Array, data_shape: Optional[tuple[int, ...]]) -> None:
    """Raise at trace time (shapes are static) when x is not a float batch of the model's data shape."""
    if x.ndim < 2:
        raise InvalidInputError(f"x: expected a batch [B, *data_shape] with at least 2 axes, got shape "
                                f"{x.shape}; add a leading batch axis.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InvalidInputError(f"x: expected floating-point data (scaled by the data scaler), got dtype "
                                f"{x.dtype}.")
    if data_shape is not None and tuple(x.shape[1:]) != tuple(data_shape):
        raise InvalidInputError(f"x: batch of shape {x.shape} does not match the model's data shape "
                                f"[B, *{tuple(data_shape)}]; check data.image_size / data.num_channels.")


def _vp_integral(sde: sde_lib.SDE, t: Array) -> Array:
    """B(t) = int_0^t beta = b0 t + (b1 - b0) t^2 / 2, shape of t."""
    return sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t ** 2


def _vp_time(sde: sde_lib.SDE, b: Array) -> Array:
    """The inverse of _vp_integral (its positive root, cancellation-free), shape of b."""
    db = sde.beta_max - sde.beta_min
    return 2.0 * b / (sde.beta_min + jnp.sqrt(sde.beta_min ** 2 + 2.0 * db * b))


def _log_weight_cdf(sde: sde_lib.SDE, t: Array, xp: Any = jnp) -> Array:
    """An antiderivative F(t) of g(t)^2 / sigma(t)^2 (VP and sub-VP), shape of t; xp: jnp or np.

    VP: g^2 / sigma^2 = beta / (1 - e^-B), so F = log(e^B - 1). sub-VP: g^2 / sigma^2 =
    beta (1 + e^-B) / (1 - e^-B), so F = 2 log(e^B - 1) - B = 2 log(2 sinh(B / 2)).
    """
    b = _vp_integral(sde, t)
    if isinstance(sde, sde_lib.SubVPSDE):
        return 2.0 * xp.log(2.0 * xp.sinh(0.5 * b))
    return xp.log(xp.expm1(b))


def importance_normalizer(sde: sde_lib.SDE, eps: float) -> float:
    """Z = int_eps^T g(t)^2 / sigma(t)^2 dt, the normaliser of the importance density (a float)."""
    if isinstance(sde, sde_lib.VESDE):
        # g^2 / sigma^2 = 2 log(smax / smin) for every t: importance sampling is uniform.
        return 2.0 * math.log(sde.sigma_max / sde.sigma_min) * (sde.T - eps)
    ends = _log_weight_cdf(sde, np.array([eps, sde.T], np.float64), np)
    return float(ends[1] - ends[0])


def sample_importance_weighted_time(key: Array, sde: sde_lib.SDE, shape: tuple[int, ...],
                                    eps: float) -> Array:
    """Times t [*shape] in [eps, T] with density g(t)^2 / (sigma(t)^2 Z), by the exact inverse CDF.

    References:
      Song, Durkan, Murray & Ermon, "Maximum Likelihood Training of Score-Based Diffusion
      Models", NeurIPS 2021, Section 5 (importance sampling for variance reduction).
    """
    u = jax.random.uniform(key, shape)
    if isinstance(sde, sde_lib.VESDE):
        return eps + u * (sde.T - eps)
    f_eps, f_T = _log_weight_cdf(sde, jnp.asarray(eps)), _log_weight_cdf(sde, jnp.asarray(sde.T))
    f = f_eps + u * (f_T - f_eps)
    if isinstance(sde, sde_lib.SubVPSDE):
        b = 2.0 * jnp.arcsinh(0.5 * jnp.exp(0.5 * f))
    else:
        b = jnp.log1p(jnp.exp(f))
    return jnp.clip(_vp_time(sde, b), eps, sde.T)


def get_sde_loss_fn(sde: sde_lib.SDE, apply_fn: ApplyFn, *, train: bool, reduce_mean: bool = True,
                    continuous: bool = True, likelihood_weighting: bool = False, eps: float = 1e-5,
                    importance_weighting: bool = False,
                    data_shape: Optional[Sequence[int]] = None,
                    precond: Optional[edm.Preconditioning] = None) -> LossFn:
    """Denoising score matching over t ~ U(eps, T): loss_fn(key, params, model_state, x [B, ...]).

    Per example: `reduce(square(score * std + z))` with x_t = mean(x, t) + std(t) z, or with
    `likelihood_weighting` `reduce(square(score + z / std)) * g(t)^2`; the loss is the batch mean.
    With `importance_weighting` (likelihood weighting only), t has density q = g^2 / (std^2 Z) and
    the per-example loss is `reduce(square(score * std + z)) * Z / (T - eps)`, i.e. the weighted
    loss times 1 / (q (T - eps)): the same expectation with a lower variance (ScoreFlow).
    """
    data_shape = None if data_shape is None else tuple(data_shape)
    scale = importance_normalizer(sde, eps) / (sde.T - eps) if importance_weighting else 1.0

    def loss_fn(key: Array, params: Any, model_state: Any, x: Array) -> tuple[Array, Any]:
        _check_batch(x, data_shape)
        key_t, key_z, key_dropout = jax.random.split(key, 3)
        if importance_weighting:
            t = sample_importance_weighted_time(key_t, sde, (x.shape[0],), eps).astype(x.dtype)
        else:
            t = jax.random.uniform(key_t, (x.shape[0],), minval=eps, maxval=sde.T)
        z = jax.random.normal(key_z, x.shape, x.dtype)
        mean, std = sde.marginal_prob(x, t)
        std_b = sde_lib.batch_broadcast(std, x)
        score, new_state = mscore.model_score(sde, apply_fn, params, model_state, mean + std_b * z, t,
                                              continuous=continuous, train=train, rng=key_dropout,
                                              precond=precond)
        if importance_weighting:
            losses = _reduce(jnp.square(score * std_b + z), reduce_mean) * scale
        elif likelihood_weighting:
            g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2
            losses = _reduce(jnp.square(score + z / std_b), reduce_mean) * g2
        else:
            losses = _reduce(jnp.square(score * std_b + z), reduce_mean)
        return jnp.mean(losses), new_state

    return loss_fn


def get_smld_loss_fn(vesde: sde_lib.VESDE, apply_fn: ApplyFn, *, train: bool,
                     reduce_mean: bool = False,
                     data_shape: Optional[Sequence[int]] = None) -> LossFn:
    """Discrete SMLD (NCSN) loss with integer labels into the descending sigma table.

    labels ~ U{0, ..., N-1}, sigma = sigmas[::-1][labels], loss per example
    `reduce(square(output + z / sigma)) * sigma^2`, where the network output is the score.
    """
    data_shape = None if data_shape is None else tuple(data_shape)

    def loss_fn(key: Array, params: Any, model_state: Any, x: Array) -> tuple[Array, Any]:
        _check_batch(x, data_shape)
        key_label, key_z, key_dropout = jax.random.split(key, 3)
        # Earlier SMLD networks index their own sigma table in descending order.
        sigmas_desc = vesde.discrete_sigmas[::-1]
        labels = jax.random.choice(key_label, vesde.N, shape=(x.shape[0],))
        sigmas = sigmas_desc[labels]
        sigmas_b = sde_lib.batch_broadcast(sigmas, x)
        noise = jax.random.normal(key_z, x.shape, x.dtype) * sigmas_b
        output, new_state = mscore.apply_model(apply_fn, params, model_state, x + noise, labels,
                                               train=train, rng=key_dropout)
        target = -noise / sigmas_b ** 2
        losses = _reduce(jnp.square(output - target), reduce_mean) * sigmas ** 2
        return jnp.mean(losses), new_state

    return loss_fn


def get_ddpm_loss_fn(vpsde: sde_lib.VPSDE, apply_fn: ApplyFn, *, train: bool,
                     reduce_mean: bool = True,
                     data_shape: Optional[Sequence[int]] = None) -> LossFn:
    """Discrete DDPM loss (L_simple): the network predicts the noise at integer timestep labels.

    labels ~ U{0, ..., N-1}, x_t = sqrt(abar[labels]) x + sqrt(1 - abar[labels]) z, loss per
    example `reduce(square(output - z))`.
    """
    data_shape = None if data_shape is None else tuple(data_shape)

    def loss_fn(key: Array, params: Any, model_state: Any, x: Array) -> tuple[Array, Any]:
        _check_batch(x, data_shape)
        key_label, key_z, key_dropout = jax.random.split(key, 3)
        labels = jax.random.choice(key_label, vpsde.N, shape=(x.shape[0],))
        noise = jax.random.normal(key_z, x.shape, x.dtype)
        perturbed = (sde_lib.batch_broadcast(vpsde.sqrt_alphas_cumprod[labels], x) * x
                     + sde_lib.batch_broadcast(vpsde.sqrt_1m_alphas_cumprod[labels], x) * noise)
        output, new_state = mscore.apply_model(apply_fn, params, model_state, perturbed, labels,
                                               train=train, rng=key_dropout)
        losses = _reduce(jnp.square(output - noise), reduce_mean)
        return jnp.mean(losses), new_state

    return loss_fn


def get_edm_loss_fn(precond: edm.Preconditioning, apply_fn: ApplyFn, *, train: bool,
                    reduce_mean: bool = True, p_mean: float = -1.2, p_std: float = 1.2,
                    data_shape: Optional[Sequence[int]] = None) -> LossFn:
    """EDM's loss: lambda(sigma) reduce(square(D(y + sigma z; sigma) - y)), ln sigma ~ N(p_mean, p_std^2).

    lambda = 1 / c_out^2 makes it the unit-variance target's loss reduce(square(F - target)); for
    data of std sigma_data and the optimal D it is 1 (reduce_mean) at every sigma.
    """
    data_shape = None if data_shape is None else tuple(data_shape)

    def loss_fn(key: Array, params: Any, model_state: Any, x: Array) -> tuple[Array, Any]:
        _check_batch(x, data_shape)
        key_sigma, key_z, key_dropout = jax.random.split(key, 3)
        sigma = edm.sample_sigma(key_sigma, x.shape[0], p_mean, p_std).astype(x.dtype)
        noisy = x + sde_lib.batch_broadcast(sigma, x) * jax.random.normal(key_z, x.shape, x.dtype)
        d, new_state = mscore.model_denoiser(precond, apply_fn, params, model_state, noisy, sigma,
                                             train=train, rng=key_dropout)
        losses = _reduce(jnp.square(d - x), reduce_mean) * precond.loss_weight(sigma)
        return jnp.mean(losses), new_state

    return loss_fn


LOSSES = ("dsm", "smld", "ddpm", "edm")


def _default_loss(sde: sde_lib.SDE, continuous: bool) -> str:
    """The official choice: DSM when continuous, else SMLD for VE and DDPM for VP."""
    if continuous:
        return "dsm"
    if isinstance(sde, sde_lib.VESDE):
        return "smld"
    if isinstance(sde, sde_lib.VPSDE):
        return "ddpm"
    raise InvalidInputError(f"training.continuous: discrete training is defined for VESDE (SMLD) and VPSDE "
                            f"(DDPM) only, got continuous=False with {type(sde).__name__}; set "
                            f"training.continuous=True.")


def _validate(sde: sde_lib.SDE, name: str, likelihood_weighting: bool, eps: float,
              importance_weighting: bool = False,
              precond: Optional[edm.Preconditioning] = None) -> None:
    checks.check_sde(sde)
    if name not in LOSSES:
        raise InvalidInputError(f"loss: unknown loss {name!r}; valid names are {list(LOSSES)}.")
    mscore.check_preconditioning(sde, precond)
    if name == "edm" and precond is None:
        raise InvalidInputError("training.loss: 'edm' trains EDM's preconditioned denoiser, got "
                                "model.preconditioning='none'; set model.preconditioning='edm'.")
    if name in ("smld", "ddpm") and precond is not None:
        raise InvalidInputError(f"loss: the discrete {name!r} loss feeds the network integer labels, "
                                f"not EDM's preconditioned input; set training.loss='edm' (or 'dsm').")
    if name == "smld" and not isinstance(sde, sde_lib.VESDE):
        raise InvalidInputError(f"loss: 'smld' needs a VESDE, got {type(sde).__name__}.")
    # SubVPSDE is not a VPSDE subclass, so this rejects it too.
    if name == "ddpm" and not isinstance(sde, sde_lib.VPSDE):
        raise InvalidInputError(f"loss: 'ddpm' needs a VPSDE, got {type(sde).__name__}.")
    if name != "dsm" and likelihood_weighting:
        raise InvalidInputError(f"training.likelihood_weighting: likelihood weighting is defined for the "
                                f"continuous DSM loss only, got likelihood_weighting=True with the discrete "
                                f"{name!r} loss; set training.continuous=True or likelihood_weighting=False.")
    if importance_weighting and not likelihood_weighting:
        raise InvalidInputError("training.importance_weighting: importance sampling of t is "
                                "defined for the likelihood-weighted DSM loss only, got "
                                "importance_weighting=True with likelihood_weighting=False; set "
                                "training.likelihood_weighting=True or importance_weighting=False.")
    checks.check_eps(sde, eps)


def get_loss_fn(sde: sde_lib.SDE, apply_fn: ApplyFn, *, train: bool, reduce_mean: bool = False,
                continuous: bool = True, likelihood_weighting: bool = False, eps: float = 1e-5,
                loss: Optional[str] = None, importance_weighting: bool = False,
                data_shape: Optional[Sequence[int]] = None,
                precond: Optional[edm.Preconditioning] = None, p_mean: float = -1.2,
                p_std: float = 1.2) -> LossFn:
    """Build the training (or, with train=False, evaluation) loss: loss_fn(key, params, model_state, x).

    Args:
      sde: the forward SDE.
      apply_fn: a flax `Module.apply`; the module maps `(x, labels, train)` to its output.
      train: train mode (dropout on, mutable model state) or evaluation mode.
      reduce_mean: per-example mean over data dimensions, else the official 0.5 * sum.
      continuous: continuous-time DSM (official default); False picks SMLD for VE, DDPM for VP.
      likelihood_weighting: weight DSM by g(t)^2 (continuous DSM only).
      eps: smallest training time of DSM, in (0, T).
      loss: override the official choice with one of `LOSSES` ('dsm' with continuous=False trains
        DSM through the discrete label conventions, as the official `get_sde_loss_fn` allows).
      importance_weighting: with likelihood_weighting, draw t with density proportional to
        g^2 / std^2 and reweight (same expected loss, lower variance; Song et al. 2021b).
      data_shape: the model's per-example data shape; a batch of another shape raises at trace time.
      precond: EDM's preconditioning of the network (VE only), or None (the official conventions).
      p_mean, p_std: ln sigma ~ N(p_mean, p_std^2) of the 'edm' loss.

    Returns:
      `loss_fn(key, params, model_state, x [B, ...]) -> (scalar loss, new model state)`.

    Raises:
      ValueError: unknown loss, discrete sub-VP, likelihood weighting with a discrete loss,
        importance weighting without likelihood weighting, eps outside (0, T).
    """
    name = _default_loss(sde, continuous) if loss is None else loss
    _validate(sde, name, likelihood_weighting, eps, importance_weighting, precond)
    if name == "edm":
        edm.check_lognormal(p_mean, p_std)
        return get_edm_loss_fn(precond, apply_fn, train=train, reduce_mean=reduce_mean,
                               p_mean=p_mean, p_std=p_std, data_shape=data_shape)
    if name == "smld":
        return get_smld_loss_fn(sde, apply_fn, train=train, reduce_mean=reduce_mean,
                                data_shape=data_shape)
    if name == "ddpm":
        return get_ddpm_loss_fn(sde, apply_fn, train=train, reduce_mean=reduce_mean,
                                data_shape=data_shape)
    return get_sde_loss_fn(sde, apply_fn, train=train, reduce_mean=reduce_mean,
                           continuous=continuous, likelihood_weighting=likelihood_weighting,
                           eps=eps, importance_weighting=importance_weighting,
                           data_shape=data_shape, precond=precond)

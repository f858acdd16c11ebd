"""Turn a noise-conditional network into score_fn(x, t), with the official score_sde label conventions.

Conventions (official `models/utils.get_score_fn`), for `t [B]` in [0, T]:
  - VP and sub-VP, continuous (and sub-VP always): labels = 999 t (fixed 999, not N - 1); the network
    predicts the noise, -std(t) * score, so score = -output / std(t) with the SDE's marginal std.
  - VP, discrete (DDPM): labels = (N - 1) t; score = -output / sqrt(1 - alphas_cumprod[int(labels)]).
  - VE, continuous: labels = sigma(t), the marginal std; the network's output is the score (NCSN++
    divides by sigma itself when `scale_by_sigma`).
  - VE, discrete (SMLD): labels = round((T - t) (N - 1)) as int32, an index into the network's
    descending sigma table; the output is the score.
  - EDM preconditioning (VE only, any `continuous`): the network sees (c_in x, c_noise(sigma(t)))
    and its output F gives the denoiser D = c_skip x + c_out F; score = (D - x) / sigma^2
    (score_jax/edm.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from score_jax import edm
from score_jax import sde as sde_lib
from score_jax.errors import InvalidInputError

Array = jax.Array
ApplyFn = Callable[..., Any]


def time_to_labels(sde: sde_lib.SDE, t: Array, *, continuous: bool) -> Array:
    """Network conditioning labels [B] for diffusion times t [B] (see module docstring)."""
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.SubVPSDE)):
        if continuous or isinstance(sde, sde_lib.SubVPSDE):
            return t * 999
        return t * (sde.N - 1)
    if isinstance(sde, sde_lib.VESDE):
        if continuous:
            return sde.sigma(t)
        return jnp.round((sde.T - t) * (sde.N - 1)).astype(jnp.int32)
    raise InvalidInputError(f"sde: expected VESDE, VPSDE or SubVPSDE, got {type(sde).__name__}.")


def output_to_score(sde: sde_lib.SDE, output: Array, t: Array, *, continuous: bool) -> Array:
    """Score [B, ...] from the network output [B, ...] at times t [B] (see module docstring)."""
    if isinstance(sde, (sde_lib.VPSDE, sde_lib.SubVPSDE)):
        if continuous or isinstance(sde, sde_lib.SubVPSDE):
            std = sde.marginal_prob(jnp.zeros_like(output), t)[1]
        else:
            std = sde.sqrt_1m_alphas_cumprod[sde_lib.timestep_index(sde, t)]
        return -output / sde_lib.batch_broadcast(std, output)
    if isinstance(sde, sde_lib.VESDE):
        return output
    raise InvalidInputError(f"sde: expected VESDE, VPSDE or SubVPSDE, got {type(sde).__name__}.")


def apply_model(apply_fn: ApplyFn, params: Any, model_state: Any, x: Array, labels: Array, *,
                train: bool, rng: Optional[Array] = None) -> tuple[Array, Any]:
    """Run a flax network `(x, labels, train) -> output` and return (output, new model state).

    `model_state` holds the non-parameter collections (e.g. batch statistics); in train mode they are
    mutable and `rng` seeds dropout.
    """
    variables = {"params": params, **(model_state or {})}
    rngs = {"dropout": rng} if (train and rng is not None) else None
    if train and model_state:
        output, new_state = apply_fn(variables, x, labels, train=True, rngs=rngs,
                                     mutable=list(model_state.keys()))
        return output, new_state
    output = apply_fn(variables, x, labels, train=train, rngs=rngs)
    return output, model_state


def model_denoiser(precond: edm.Preconditioning, apply_fn: ApplyFn, params: Any, model_state: Any,
                   x: Array, sigma: Array, *, train: bool = False,
                   rng: Optional[Array] = None) -> tuple[Array, Any]:
    """EDM denoiser D(x; sigma) [B, ...] of the network at x [B, ...], sigma [B], and the new state."""
    net_x, c_noise = edm.network_input(precond, x, sigma)
    output, new_state = apply_model(apply_fn, params, model_state, net_x, c_noise, train=train,
                                    rng=rng)
    return edm.denoised(precond, output, x, sigma), new_state


def check_preconditioning(sde: sde_lib.SDE, precond: Optional[edm.Preconditioning]) -> None:
    """One line unless precond is None or the SDE is VE (EDM's clock)."""
    if precond is not None and not isinstance(sde, sde_lib.VESDE):
        raise InvalidInputError(f"model.preconditioning='edm' runs on the VE SDE (EDM's sigma(t) in "
                                f"another clock), got {type(sde).__name__}; set training.sde='vesde'.")


def model_score(sde: sde_lib.SDE, apply_fn: ApplyFn, params: Any, model_state: Any, x: Array,
                t: Array, *, continuous: bool, train: bool = False,
                rng: Optional[Array] = None,
                precond: Optional[edm.Preconditioning] = None) -> tuple[Array, Any]:
    """Score [B, ...] of the network at x [B, ...], t [B], and the new model state.

    With `precond` (EDM, VE only) the network is the denoiser's F at sigma(t), whatever `continuous`.
    """
    if precond is not None:
        check_preconditioning(sde, precond)
        sigma = sde.marginal_prob(x, t)[1]
        d, new_state = model_denoiser(precond, apply_fn, params, model_state, x, sigma, train=train,
                                      rng=rng)
        return edm.score_of_denoised(d, x, sigma), new_state
    labels = time_to_labels(sde, t, continuous=continuous)
    output, new_state = apply_model(apply_fn, params, model_state, x, labels, train=train, rng=rng)
    return output_to_score(sde, output, t, continuous=continuous), new_state


@dataclasses.dataclass(frozen=True)
class _EvalScore:
    """Static part of an evaluation-mode score function; hashable so jit caches on it."""

    sde: sde_lib.SDE
    apply_fn: ApplyFn
    continuous: bool
    precond: Optional[edm.Preconditioning] = None

    def __call__(self, variables: tuple[Any, Any], x: Array, t: Array) -> Array:
        params, model_state = variables
        return model_score(self.sde, self.apply_fn, params, model_state, x, t,
                           continuous=self.continuous, precond=self.precond)[0]


def get_score_fn(sde: sde_lib.SDE, apply_fn: ApplyFn, params: Any, model_state: Any = None, *,
                 continuous: bool = True,
                 precond: Optional[edm.Preconditioning] = None) -> jax.tree_util.Partial:
    """Evaluation-mode score_fn(x [B, ...], t [B]) -> score [B, ...] of a network (EDM: `precond`).

    The result is a pytree (`jax.tree_util.Partial`) holding the parameters as leaves, so passing new
    parameters to a jitted sampler that takes it as an argument does not recompile.
    """
    check_preconditioning(sde, precond)
    return jax.tree_util.Partial(_EvalScore(sde, apply_fn, continuous, precond),
                                 (params, model_state or {}))

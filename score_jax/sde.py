"""Forward SDEs of score-based generative modelling (VE, VP, sub-VP) and their reverses.

Each SDE is a frozen, hashable dataclass whose methods are pure `jnp` functions, so an SDE can be a
static argument of `jax.jit`. Method names follow the official score_sde `sde_lib`. Time `t` has
shape `[batch]` (a scalar is broadcast) and is broadcast over any data shape `x [batch, ...]`.

References:
  Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations",
  ICLR 2021, Sections 3.4 and Appendix B-C.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Union

import jax
import jax.numpy as jnp
import numpy as np
from score_jax.errors import InvalidInputError

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_broadcast(v: Array, x: Array) -> Array:
    """Reshape per-example values v [B] (or a scalar) to broadcast against x [B, ...]."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _batch_time(x: Array, t: Array) -> Array:
    """Check t against x and return it as float [B]; shapes are static, so this raises at trace time."""
    t = jnp.asarray(t)
    if x.ndim < 1:
        raise InvalidInputError(f"x must have a leading batch axis, got shape {x.shape}.")
    if t.ndim == 0:
        return jnp.broadcast_to(t, x.shape[:1]).astype(jnp.result_type(float))
    if t.shape != x.shape[:1]:
        raise InvalidInputError(
            f"t must have shape [batch] = {x.shape[:1]} to match x {x.shape}, got {t.shape}.")
    return t


def _sum_except_batch(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise InvalidInputError(f"N must be a positive integer number of discretisation steps, "
                                f"got {name}={value!r}.")


def timestep_index(sde: "SDE", t: Array) -> Array:
    """Floor index [B] int32 of times t [B] on the N-point grid of [0, T] (official discretisations)."""
    return jnp.clip((t * (sde.N - 1) / sde.T).astype(jnp.int32), 0, sde.N - 1)


class _EulerMaruyama:
    """Euler-Maruyama discretisation shared by every SDE: f = drift dt, G = g sqrt(dt)."""

    def em_discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Euler-Maruyama step x [B, ...], t [B] -> (f [B, ...], G [B]) with dt = T / N."""
        dt = self.T / self.N
        drift, diffusion = self.sde(x, t)
        return drift * dt, diffusion * math.sqrt(dt)


@dataclasses.dataclass(frozen=True)
class VESDE(_EulerMaruyama):
    """Variance-exploding SDE (SMLD): dx = sigma(t) sqrt(2 log(smax/smin)) dw."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    def __post_init__(self):
        if not (self.sigma_min > 0 and self.sigma_max > 0):
            raise InvalidInputError(f"VESDE sigmas must be positive, got sigma_min={self.sigma_min}, "
                                    f"sigma_max={self.sigma_max}.")
        if not self.sigma_min < self.sigma_max:
            raise InvalidInputError(f"VESDE needs sigma_min < sigma_max, got sigma_min={self.sigma_min}, "
                                    f"sigma_max={self.sigma_max}.")
        _check_positive_int("N", self.N)

    @property
    def T(self) -> float:
        return 1.0

    @property
    def discrete_sigmas(self) -> Array:
        """SMLD noise levels [N], geometric and ascending from sigma_min to sigma_max."""
        return jnp.exp(jnp.linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N))

    def sigma(self, t: Array) -> Array:
        """Marginal noise level sigma(t) = smin (smax/smin)^t, same shape as t."""
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift [B, ...] and diffusion [B] of the forward SDE at x [B, ...], t [B]."""
        t = _batch_time(x, t)
        diffusion = self.sigma(t) * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
        return jnp.zeros_like(x), diffusion

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean [B, ...] and std [B] of the perturbation kernel p_0t(x_t | x_0 = x)."""
        t = _batch_time(x, t)
        return x, self.sigma(t)

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        """Draw from the prior N(0, sigma_max^2 I), shape `shape`."""
        return jax.random.normal(key, shape) * self.sigma_max

    def prior_logp(self, z: Array) -> Array:
        """Log density of z [B, ...] under the prior, [B] in nats."""
        n = np.prod(z.shape[1:])
        return (-n / 2.0 * np.log(2 * np.pi * self.sigma_max ** 2)
                - _sum_except_batch(z ** 2) / (2 * self.sigma_max ** 2))

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """SMLD discretisation x_{i+1} = x_i + sqrt(sigma_{i+1}^2 - sigma_i^2) z: (f [B, ...], G [B])."""
        t = _batch_time(x, t)
        timestep = timestep_index(self, t)
        sigmas = self.discrete_sigmas
        sigma = sigmas[timestep]
        adjacent = jnp.where(timestep == 0, jnp.zeros_like(t), sigmas[jnp.maximum(timestep - 1, 0)])
        return jnp.zeros_like(x), jnp.sqrt(sigma ** 2 - adjacent ** 2)

    def langevin_alpha(self, t: Array) -> Array:
        """Per-step scale alpha_i of the Langevin corrector's step size: 1 for VE, shape of t."""
        return jnp.ones_like(jnp.asarray(t, dtype=jnp.result_type(float)))

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or probability-flow ODE) driven by score_fn(x, t)."""
        return ReverseSDE(self, score_fn, probability_flow)


class _VPSchedule(_EulerMaruyama):
    """The linear beta(t) schedule and DDPM tables shared by VP and sub-VP."""

    def _validate(self):
        if not (self.beta_min >= 0 and self.beta_max > 0):
            raise InvalidInputError(f"{type(self).__name__} betas must be non-negative with beta_max > 0, "
                                    f"got beta_min={self.beta_min}, beta_max={self.beta_max}.")
        if not self.beta_min <= self.beta_max:
            raise InvalidInputError(f"{type(self).__name__} needs beta_min <= beta_max, got "
                                    f"beta_min={self.beta_min}, beta_max={self.beta_max}.")
        _check_positive_int("N", self.N)
        if self.beta_max / self.N >= 1:
            raise InvalidInputError(f"{type(self).__name__} needs beta_max / N < 1 so that the DDPM "
                                    f"alphas are positive, got beta_max={self.beta_max}, N={self.N}.")

    @property
    def T(self) -> float:
        return 1.0

    @property
    def discrete_betas(self) -> Array:
        """DDPM betas [N], linear from beta_min/N to beta_max/N."""
        return jnp.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @property
    def alphas(self) -> Array:
        """DDPM alphas [N] = 1 - betas."""
        return 1.0 - self.discrete_betas

    @property
    def alphas_cumprod(self) -> Array:
        """DDPM cumulative products of alphas [N]."""
        return jnp.cumprod(self.alphas, axis=0)

    @property
    def sqrt_alphas_cumprod(self) -> Array:
        return jnp.sqrt(self.alphas_cumprod)

    @property
    def sqrt_1m_alphas_cumprod(self) -> Array:
        return jnp.sqrt(1.0 - self.alphas_cumprod)

    def beta(self, t: Array) -> Array:
        """beta(t) = b0 + t (b1 - b0), same shape as t."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_coeff(self, t: Array) -> Array:
        """log of the marginal mean scale, -int_0^t beta / 2 = -t^2 (b1-b0)/4 - t b0/2."""
        return -0.25 * t ** 2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        """Draw from the prior N(0, I), shape `shape`."""
        return jax.random.normal(key, shape)

    def prior_logp(self, z: Array) -> Array:
        """Log density of z [B, ...] under N(0, I), [B] in nats."""
        n = np.prod(z.shape[1:])
        return -n / 2.0 * np.log(2 * np.pi) - _sum_except_batch(z ** 2) / 2.0

    def langevin_alpha(self, t: Array) -> Array:
        """Per-step scale alpha_i = 1 - beta_i of the Langevin corrector's step size, shape of t.

        sub-VP shares VP's beta schedule, so it gets the same alphas (the official code reads
        `sde.alphas`, which its sub-VP lacks, and crashes).
        """
        return self.alphas[timestep_index(self, jnp.asarray(t))]

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
        """The reverse-time SDE (or probability-flow ODE) driven by score_fn(x, t)."""
        return ReverseSDE(self, score_fn, probability_flow)


@dataclasses.dataclass(frozen=True)
class VPSDE(_VPSchedule):
    """Variance-preserving SDE (DDPM): dx = -beta(t)/2 x dt + sqrt(beta(t)) dw."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def __post_init__(self):
        self._validate()

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift [B, ...] and diffusion [B] of the forward SDE at x [B, ...], t [B]."""
        t = _batch_time(x, t)
        beta_t = self.beta(t)
        return -0.5 * batch_broadcast(beta_t, x) * x, jnp.sqrt(beta_t)

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean [B, ...] and std [B] of the perturbation kernel p_0t(x_t | x_0 = x)."""
        t = _batch_time(x, t)
        lmc = self.log_mean_coeff(t)
        # expm1 keeps float32 accuracy at small t, where 1 - exp(.) cancels (0.6% error at t = 1e-5).
        return batch_broadcast(jnp.exp(lmc), x) * x, jnp.sqrt(-jnp.expm1(2.0 * lmc))

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """DDPM discretisation x_{i+1} = sqrt(1 - beta_i) x_i + sqrt(beta_i) z: (f [B, ...], G [B])."""
        t = _batch_time(x, t)
        timestep = timestep_index(self, t)
        beta = self.discrete_betas[timestep]
        alpha = self.alphas[timestep]
        f = batch_broadcast(jnp.sqrt(alpha), x) * x - x
        return f, jnp.sqrt(beta)


@dataclasses.dataclass(frozen=True)
class SubVPSDE(_VPSchedule):
    """sub-VP SDE: VP drift with diffusion sqrt(beta(t) (1 - exp(-2 int_0^t beta)))."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def __post_init__(self):
        self._validate()

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift [B, ...] and diffusion [B] of the forward SDE at x [B, ...], t [B]."""
        t = _batch_time(x, t)
        beta_t = self.beta(t)
        discount = -jnp.expm1(-2 * self.beta_min * t - (self.beta_max - self.beta_min) * t ** 2)
        return -0.5 * batch_broadcast(beta_t, x) * x, jnp.sqrt(beta_t * discount)

    def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Mean [B, ...] and std [B] of the perturbation kernel p_0t(x_t | x_0 = x)."""
        t = _batch_time(x, t)
        lmc = self.log_mean_coeff(t)
        return batch_broadcast(jnp.exp(lmc), x) * x, -jnp.expm1(2.0 * lmc)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Euler-Maruyama discretisation (sub-VP has no ancestral form): (f [B, ...], G [B])."""
        return self.em_discretize(x, _batch_time(x, t))


SDE = Union[VESDE, VPSDE, SubVPSDE]


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """Reverse-time SDE dx = [f - g^2 score] dt + g dw_bar, or with probability_flow the ODE
    dx = [f - g^2 score / 2] dt; same method names as the forward SDE (time runs from T to 0,
    so solvers step with negative dt)."""

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def N(self) -> int:
        return self.forward.N

    def _score(self, x: Array, t: Array) -> Array:
        score = self.score_fn(x, t)
        if score.shape != x.shape:
            raise InvalidInputError(f"score_fn must return the shape of x {x.shape}, got {score.shape}.")
        return score

    def _reverse(self, f: Array, g: Array, x: Array, t: Array) -> tuple[Array, Array]:
        weight = 0.5 if self.probability_flow else 1.0
        score = self._score(x, t)
        f = f - batch_broadcast(g ** 2, x) * score * weight
        g = jnp.zeros_like(g) if self.probability_flow else g
        return f, g

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Reverse drift [B, ...] and diffusion [B] (diffusion 0 for the probability flow)."""
        t = _batch_time(x, t)
        drift, diffusion = self.forward.sde(x, t)
        return self._reverse(drift, diffusion, x, t)

    def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Reverse of the forward discretisation: (f - G^2 score [* 1/2] [B, ...], G or 0 [B])."""
        t = _batch_time(x, t)
        f, G = self.forward.discretize(x, t)
        return self._reverse(f, G, x, t)


SDES = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": SubVPSDE}


def get_sde(name: str, *, sigma_min: float = 0.01, sigma_max: float = 50.0,
            beta_min: float = 0.1, beta_max: float = 20.0, num_scales: int = 1000) -> SDE:
    """Build an SDE by its official config name ('vesde', 'vpsde', 'subvpsde')."""
    key = name.lower()
    if key not in SDES:
        raise InvalidInputError(f"training.sde: unknown SDE {name!r}; valid names are {sorted(SDES)}.")
    if key == "vesde":
        return VESDE(sigma_min=sigma_min, sigma_max=sigma_max, N=num_scales)
    return SDES[key](beta_min=beta_min, beta_max=beta_max, N=num_scales)

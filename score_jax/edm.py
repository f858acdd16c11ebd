"""EDM's formulation (Karras et al. 2022): the sigma-parameterised denoiser and its training weights.

A network F becomes the denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise), with the
coefficients of Table 1 chosen so that, for data of standard deviation sigma_data, the network's
input and its training target both have unit variance at every sigma. The score follows from
Tweedie's formula, score(x; sigma) = (D(x; sigma) - x) / sigma^2. Training draws
ln sigma ~ N(P_mean, P_std^2) and weights ||D - y||^2 by lambda(sigma) = 1 / c_out^2, which is
exactly the unit-variance target's loss ||F - (y - c_skip x) / c_out||^2.

EDM's SDE dx = sqrt(2 t) dw with sigma(t) = t and the VE SDE with sigma_min / sigma_max share one
probability-flow ODE, dx / dsigma = -sigma score(x; sigma), written in another clock: score_jax
runs EDM on `VESDE(sigma_min=0.002, sigma_max=80)`, so its Heun and stochastic samplers
(fast_sampling's 'heun' with skip_type 'edm' is Algorithm 1, with s_churn Algorithm 2) and the
bits/dim of likelihood.py apply unchanged, in exact arithmetic.

References:
  Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based Generative
  Models", NeurIPS 2022, Table 1, Eq. (2)-(8) and Algorithms 1-2.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from score_jax.errors import InvalidInputError
from score_jax.sde import batch_broadcast

Array = jax.Array
PRECONDITIONINGS = ("none", "edm")


@dataclasses.dataclass(frozen=True)
class Preconditioning:
    """EDM's preconditioning for data of standard deviation sigma_data (hashable: jit-static)."""

    sigma_data: float = 0.5

    def __post_init__(self):
        if not (isinstance(self.sigma_data, (int, float)) and self.sigma_data > 0):
            raise InvalidInputError(f"model.sigma_data must be a positive number (the data's standard "
                                    f"deviation; 0.5 for images in [-1, 1]), got {self.sigma_data!r}.")

    def coefficients(self, sigma: Array) -> tuple[Array, Array, Array, Array]:
        """(c_skip, c_out, c_in, c_noise), each of the shape of sigma [B] (Table 1)."""
        sd2 = self.sigma_data ** 2
        total = sigma ** 2 + sd2
        return (sd2 / total, sigma * self.sigma_data * jax.lax.rsqrt(total), jax.lax.rsqrt(total),
                jnp.log(sigma) / 4.0)

    def loss_weight(self, sigma: Array) -> Array:
        """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 = 1 / c_out^2, shape of sigma."""
        return (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2


def network_input(precond: Preconditioning, x: Array, sigma: Array) -> tuple[Array, Array]:
    """What the network sees: (c_in x [B, ...], c_noise [B]) for x [B, ...] at sigma [B]."""
    _, _, c_in, c_noise = precond.coefficients(sigma)
    return batch_broadcast(c_in, x) * x, c_noise


def denoised(precond: Preconditioning, output: Array, x: Array, sigma: Array) -> Array:
    """D(x; sigma) = c_skip x + c_out F [B, ...] from the network output F [B, ...]."""
    c_skip, c_out, _, _ = precond.coefficients(sigma)
    return batch_broadcast(c_skip, x) * x + batch_broadcast(c_out, x) * output


def score_of_denoised(d: Array, x: Array, sigma: Array) -> Array:
    """Tweedie: score = (D - x) / sigma^2 [B, ...] for x [B, ...] at sigma [B]."""
    return (d - x) / batch_broadcast(sigma ** 2, x)


def sample_sigma(key: Array, n: int, p_mean: float, p_std: float) -> Array:
    """Training noise levels sigma [n] with ln sigma ~ N(p_mean, p_std^2) (EDM: -1.2, 1.2)."""
    return jnp.exp(p_mean + p_std * jax.random.normal(key, (n,)))


def check_lognormal(p_mean: float, p_std: float) -> None:
    """One line when the log-normal sigma distribution's parameters are not finite with p_std > 0."""
    if not (isinstance(p_mean, (int, float)) and math.isfinite(p_mean)):
        raise InvalidInputError(f"training.p_mean must be a finite number (EDM: -1.2), got {p_mean!r}.")
    if not (isinstance(p_std, (int, float)) and math.isfinite(p_std) and p_std > 0):
        raise InvalidInputError(f"training.p_std must be a positive number (EDM: 1.2), got {p_std!r}.")


def get_preconditioning(name: str, sigma_data: float) -> Preconditioning | None:
    """The preconditioning named by model.preconditioning ('none' -> None, 'edm')."""
    if name not in PRECONDITIONINGS:
        raise InvalidInputError(f"model.preconditioning: unknown {name!r}; valid names are "
                                f"{list(PRECONDITIONINGS)}.")
    return Preconditioning(float(sigma_data)) if name == "edm" else None

"""Latent-space tools on the probability-flow ODE: interpolation, temperature, round-trip error.

The flow maps data at eps to a latent at T invertibly (sampling.ode_encode / ode_decode), so an
interpolation or a rescaling in latent space decodes to data.

References:
  Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations",
  ICLR 2021, Section 4.3 (exact latent representations, manipulation, temperature).
  Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985 (slerp).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import checks
from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax.errors import InvalidInputError

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def slerp(z0: Array, z1: Array, weights: Array) -> Array:
    """Spherical interpolation per example: z0, z1 [B, ...], weights [K] -> [K, B, ...].

    sin((1 - w) theta) / sin theta z0 + sin(w theta) / sin theta z1 with theta the angle between
    z0 and z1; w = 0 and 1 give z0 and z1 exactly; linear where theta is ~0 (parallel latents).
    """
    a, b = z0.reshape(z0.shape[0], -1), z1.reshape(z1.shape[0], -1)
    cos = jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1))
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))[None]                       # [1, B]
    w = jnp.asarray(weights, z0.dtype)[:, None]                              # [K, 1]
    small = theta < 1e-4
    safe = jnp.where(small, 1.0, jnp.sin(theta))
    c0 = jnp.where(small, 1.0 - w, jnp.sin((1.0 - w) * theta) / safe)
    c1 = jnp.where(small, w, jnp.sin(w * theta) / safe)
    c0 = jnp.where(w == 0.0, 1.0, c0)
    c1 = jnp.where(w == 0.0, 0.0, c1)
    c0, c1 = jnp.where(w == 1.0, 0.0, c0), jnp.where(w == 1.0, 1.0, c1)
    extra = (1,) * (z0.ndim - 1)
    return (c0.reshape(c0.shape + extra) * z0[None] + c1.reshape(c1.shape + extra) * z1[None])


def interpolate(sde: sde_lib.SDE, score_fn: ScoreFn, x0: Array, x1: Array, num: int, *,
                rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3,
                **ode_options: Any) -> tuple[Array, int]:
    """Decoded slerp between the latents of x0 and x1 [B, ...]: -> (images [num, B, ...], nfe).

    The first and last images are decode(encode(x0)) and decode(encode(x1)), equal to the inputs
    within the ODE tolerances. nfe sums the encode and decode solves.
    """
    x0, x1 = checks.check_data(x0, "x0"), checks.check_data(x1, "x1")
    if x0.shape != x1.shape:
        raise InvalidInputError(f"x0 and x1 must have one shape, got {x0.shape} and {x1.shape}.")
    checks.check_positive("num", num, integer=True)
    if num < 2:
        raise InvalidInputError(f"num must be >= 2 (the two endpoints included), got {num}.")
    opts = dict(rtol=rtol, atol=atol, eps=eps, **ode_options)
    z, nfe_enc = sampling.ode_encode(sde, score_fn, jnp.concatenate([x0, x1]), **opts)
    path = slerp(z[:x0.shape[0]], z[x0.shape[0]:], jnp.linspace(0.0, 1.0, num))
    images, nfe_dec = sampling.ode_decode(sde, score_fn, path.reshape((-1,) + x0.shape[1:]), **opts)
    return images.reshape(path.shape), nfe_enc + nfe_dec


def temperature_sample(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, shape: tuple[int, ...],
                       temperature: float, *, rtol: float = 1e-5, atol: float = 1e-5,
                       eps: float = 1e-3, **ode_options: Any) -> tuple[Array, int]:
    """Decode temperature * a prior draw along the flow: -> (samples [*shape], nfe)."""
    shape = checks.check_shape(shape)
    checks.check_positive("temperature", temperature)
    z = temperature * sde.prior_sampling(key, shape)
    return sampling.ode_decode(sde, score_fn, z, rtol=rtol, atol=atol, eps=eps, **ode_options)


def round_trip_error(sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, *, rtol: float = 1e-5,
                     atol: float = 1e-5, eps: float = 1e-3, **ode_options: Any) -> dict:
    """|decode(encode(x)) - x| for x [B, ...]: {max_abs_error, mean_abs_error, nfe_encode, nfe_decode}."""
    x = checks.check_data(x, "x")
    opts = dict(rtol=rtol, atol=atol, eps=eps, **ode_options)
    z, nfe_enc = sampling.ode_encode(sde, score_fn, x, **opts)
    back, nfe_dec = sampling.ode_decode(sde, score_fn, z, **opts)
    err = np.abs(np.asarray(back, np.float64) - np.asarray(x, np.float64))
    return {"max_abs_error": float(err.max()), "mean_abs_error": float(err.mean()),
            "nfe_encode": int(nfe_enc), "nfe_decode": int(nfe_dec)}

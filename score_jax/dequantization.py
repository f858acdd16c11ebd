"""Truncated-normal dequantisation of 8-bit data and its bits/dim correction (numpy, host side).

Uniform dequantisation x = (k + u) / 256, u ~ U[0, 1)^D, turns a density p on [0, 1]^D into a
bound on the probability of the pixels k: -log P(k) <= E_u[-log p(x)] + D log 256. With any other
noise density q on [0, 1]^D the same Jensen step gives

    -log P(k) <= E_u[-log p(x) + log q(u)] + D log 256,

so a non-uniform q adds log q(u) to each example's negative log-likelihood: bits/dim grows by
log q(u) / (D log 2) (its mean, -entropy(q) / log 2 per dimension, is >= 0; the gain must come from
a density p that fits the smoother dequantised data better). Here q is a normal N(0.5, scale^2)
truncated to [0, 1] in every dimension, drawn by its exact inverse CDF.

The official ScoreFlow code (yang-song/score_flow) evaluates with uniform or a learned (Flow++)
variational dequantiser; the truncated normal is a fixed, parameter-free stand-in for the latter,
and its `scale` (default 0.5) is a free choice, not a value from the paper.

References:
  Theis, van den Oord & Bethge, "A note on the evaluation of generative models", ICLR 2016.
  Ho et al., "Flow++", ICML 2019 (variational dequantisation and this bound).
  Song, Durkan, Murray & Ermon, "Maximum Likelihood Training of Score-Based Diffusion Models",
  NeurIPS 2021, Section 5.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from score_jax.errors import InvalidInputError

LOC = 0.5   # the truncated normal is centred in the unit cell


def _bounds(scale: float) -> tuple[float, float, float]:
    """Standardised bounds (a, b) of [0, 1] and log of the mass Phi(b) - Phi(a) for `scale`."""
    if isinstance(scale, bool) or not (isinstance(scale, (int, float)) and scale > 0):
        raise InvalidInputError(f"scale must be a positive float (the truncated normal's std "
                                f"before truncation), got scale={scale!r}.")
    a, b = (0.0 - LOC) / scale, (1.0 - LOC) / scale
    return a, b, math.log(special.ndtr(b) - special.ndtr(a))


def truncated_normal_log_density(u: np.ndarray, scale: float = 0.5) -> np.ndarray:
    """log q(u) elementwise for u in [0, 1] (shape of u, float64); -inf outside [0, 1]."""
    _, _, log_mass = _bounds(scale)
    u = np.asarray(u, np.float64)
    z = (u - LOC) / scale
    logq = -0.5 * z ** 2 - 0.5 * math.log(2 * math.pi) - math.log(scale) - log_mass
    return np.where((u >= 0.0) & (u <= 1.0), logq, -np.inf)


def truncated_normal_entropy(scale: float = 0.5) -> float:
    """Differential entropy of one dimension of q in nats (<= 0, with 0 for the uniform limit)."""
    a, b, log_mass = _bounds(scale)
    mass = math.exp(log_mass)
    pdf = lambda v: math.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)  # noqa: E731
    return (0.5 * math.log(2 * math.pi * math.e) + math.log(scale) + log_mass
            + (a * pdf(a) - b * pdf(b)) / (2.0 * mass))


def dequantize_truncated_normal(images: np.ndarray, rng: np.random.Generator,
                                scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Dequantise uint8 images [B, ...] to x = (k + u) / 256 in [0, 1): -> (x float32, log_q [B]).

    u ~ N(0.5, scale^2) truncated to [0, 1] per dimension; log_q [B] (float64, nats) is the
    summed log q(u) of each example, for `bpd_correction`.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim < 2:
        raise InvalidInputError(f"images must be uint8 pixels [batch, ...] in 0..255, got shape "
                                f"{images.shape} dtype {images.dtype}.")
    if not isinstance(rng, np.random.Generator):
        raise InvalidInputError(f"rng must be a numpy Generator (np.random.default_rng(seed)), got "
                                f"{type(rng).__name__}.")
    a, b, _ = _bounds(scale)
    lo, hi = special.ndtr(a), special.ndtr(b)
    p = lo + rng.random(images.shape) * (hi - lo)
    u = LOC + scale * special.ndtri(p)
    # float32 rounds (k + u) / 256 up to (k + 1) / 256 for u within ~1e-5 of 1: keep x inside its
    # cell, then score the noise the float32 data actually carries.
    top = np.nextafter(((images.astype(np.float64) + 1.0) / 256.0).astype(np.float32),
                       np.float32(0.0))
    x = np.minimum(((images.astype(np.float64) + u) / 256.0).astype(np.float32), top)
    u = np.clip(x.astype(np.float64) * 256.0 - images, 0.0, 1.0)
    log_q = truncated_normal_log_density(u, scale).reshape(images.shape[0], -1).sum(axis=1)
    return x, log_q


def bpd_correction(log_q: np.ndarray, dim: int) -> np.ndarray:
    """Bits/dim [B] to add to the uniform-dequantisation bits/dim: log_q [B] / (dim log 2)."""
    return np.asarray(log_q, np.float64) / (dim * math.log(2.0))

"""Test oracle: Gaussian-mixture data, whose every perturbed marginal p_t is a Gaussian mixture.

For x_0 ~ sum_k w_k N(mu_k, diag(s_k^2)) and a perturbation kernel N(a(t) x_0, std(t)^2 I), the marginal
is p_t = sum_k w_k N(a(t) mu_k, diag(a(t)^2 s_k^2 + std(t)^2)): log-density, score and samples are
closed forms, written here independently of the code under test (only `marginal_prob` is used, and
that is itself checked against the official fixtures and closed forms in test_sde.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """Mixture over flattened data of `shape`: weights [K], means [K, D], stds [K, D]."""

    weights: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    shape: tuple

    @property
    def dim(self) -> int:
        return int(np.prod(self.shape))

    def _scale_var(self, sde, t):
        """Per-example mean scale a(t) [B] and marginal std(t) [B]."""
        ones = jnp.ones((t.shape[0], 1), t.dtype)
        a, std = sde.marginal_prob(ones, t)
        return a[:, 0], std

    def _component_logps(self, x, a, std):
        """log w_k + log N(x | a mu_k, a^2 s_k^2 + std^2), [B, K]."""
        x = x.reshape(x.shape[0], 1, -1)                                   # [B, 1, D]
        means = a[:, None, None] * jnp.asarray(self.means)[None]          # [B, K, D]
        var = (a[:, None, None] * jnp.asarray(self.stds)[None]) ** 2 + (std ** 2)[:, None, None]
        ll = -0.5 * jnp.sum((x - means) ** 2 / var + jnp.log(2 * jnp.pi * var), axis=-1)
        return ll + jnp.log(jnp.asarray(self.weights))[None], means, var

    def log_prob(self, sde, x, t):
        """log p_t(x) [B] for x [B, *shape], t [B]."""
        a, std = self._scale_var(sde, t)
        lp, _, _ = self._component_logps(x, a, std)
        return jax.scipy.special.logsumexp(lp, axis=1)

    def log_prob_data(self, x):
        """log p_0(x) [B] of the unperturbed data."""
        x = x.reshape(x.shape[0], 1, -1)
        var = jnp.asarray(self.stds)[None] ** 2
        ll = -0.5 * jnp.sum((x - jnp.asarray(self.means)[None]) ** 2 / var
                            + jnp.log(2 * jnp.pi * var), axis=-1)
        return jax.scipy.special.logsumexp(ll + jnp.log(jnp.asarray(self.weights))[None], axis=1)

    def score(self, sde, x, t):
        """Exact score grad_x log p_t(x), shape of x."""
        a, std = self._scale_var(sde, t)
        lp, means, var = self._component_logps(x, a, std)
        resp = jax.nn.softmax(lp, axis=1)                                  # [B, K]
        flat = x.reshape(x.shape[0], 1, -1)
        s = jnp.sum(resp[..., None] * (-(flat - means) / var), axis=1)
        return s.reshape(x.shape)

    def score_fn(self, sde):
        """score_fn(x, t) closure of the exact score for `sde`."""
        return lambda x, t: self.score(sde, x, t)

    def sample(self, rng: np.random.Generator, n: int):
        """(x [n, *shape], component index [n]) drawn with numpy."""
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        z = rng.standard_normal((n, self.dim))
        x = self.means[k] + self.stds[k] * z
        return x.reshape((n,) + tuple(self.shape)).astype(np.float32), k


def two_d_mixture() -> GaussianMixture:
    """Three well separated, unequally weighted 2-D components."""
    return GaussianMixture(
        weights=np.array([0.5, 0.3, 0.2]),
        means=np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]]),
        stds=np.array([[0.4, 0.3], [0.3, 0.5], [0.5, 0.4]]),
        shape=(2,))


def image_mixture(shape=(4, 4, 1), seed: int = 0) -> GaussianMixture:
    """Two components over small 'images' of `shape` (16-D by default)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    means = np.stack([np.full(d, -1.0), np.full(d, 1.0)]) + 0.2 * rng.standard_normal((2, d))
    stds = 0.2 + 0.2 * rng.random((2, d))
    return GaussianMixture(weights=np.array([0.6, 0.4]), means=means, stds=stds, shape=tuple(shape))


def two_mode_mixture() -> GaussianMixture:
    """Issue 27's stiff case: two isotropic 2-D modes at +-(2, -1), weights 0.3 / 0.7."""
    return GaussianMixture(
        weights=np.array([0.3, 0.7]),
        means=np.array([[2.0, -1.0], [-2.0, 1.0]]),
        stds=np.array([[0.5, 0.5], [0.35, 0.35]]),
        shape=(2,))

"""Controllable generation against closed forms on Gaussian data with its exact score.

Where the known part is independent of the unknown part (block-diagonal covariance in the basis of
the projection), the exact conditional equals the marginal of the unknown part, and the paper's
replacement method is exact: the samples must match it within sampling error. (With correlated
parts the replacement method is biased; that is a property of the method, not tested here.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import controllable
from score_jax import sde as sde_lib

B = 2000
SDES = {"ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0, N=500),
        "vp": sde_lib.VPSDE(N=500), "subvp": sde_lib.SubVPSDE(N=500)}


def gaussian_score(sde, mu, cov):
    """Exact score of N(a mu, a^2 cov + std^2 I), the marginal at t of N(mu, cov) data."""
    mu, cov = jnp.asarray(mu, jnp.float32), jnp.asarray(cov, jnp.float32)
    d = mu.shape[0]

    def score(x, t):
        flat = x.reshape(x.shape[0], -1)
        a, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
        a = a[:, 0]
        prec = a[:, None, None] ** 2 * cov[None] + std[:, None, None] ** 2 * jnp.eye(d)[None]
        return -jnp.linalg.solve(prec, (flat - a[:, None] * mu[None])[..., None])[..., 0].reshape(
            x.shape)

    return score


def _check_gaussian(samples, mean, cov):
    n = samples.shape[0]
    se = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(samples.mean(0) - mean), 5 * se + 0.02)
    np.testing.assert_allclose(np.cov(samples.T), cov, atol=0.08 * np.max(np.diag(cov)))


@pytest.mark.parametrize("name", sorted(SDES))
def test_inpaint_known_exact_unknown_follows_conditional(name):
    sde = SDES[name]
    mu = np.array([0.5, -1.0, 0.3, 0.8])
    cov = np.zeros((4, 4))
    cov[:2, :2] = [[1.0, 0.6], [0.6, 0.8]]
    cov[2:, 2:] = [[0.7, -0.3], [-0.3, 0.5]]
    data = np.zeros((B, 4), np.float32)
    data[:, :2] = [1.5, -2.0]
    mask = np.broadcast_to(np.array([1.0, 1.0, 0.0, 0.0], np.float32), data.shape)
    x, nfe = controllable.inpaint(jax.random.PRNGKey(0), sde, gaussian_score(sde, mu, cov),
                                  jnp.asarray(data), jnp.asarray(mask))
    x = np.asarray(x)
    assert nfe == 2 * sde.N
    np.testing.assert_array_equal(x[:, :2], data[:, :2])
    _check_gaussian(x[:, 2:], mu[2:], cov[2:, 2:])


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_colorize_keeps_gray_and_colours_follow_conditional(name):
    sde = SDES[name]
    basis = controllable.COLOR_BASIS
    # Gaussian prior of a 1x1 RGB image, independent gray and colour coordinates.
    latent_cov = np.array([[0.9, 0.0, 0.0], [0.0, 0.6, 0.2], [0.0, 0.2, 0.4]])
    latent_mu = np.array([0.4, 0.3, -0.2])
    mu, cov = basis @ latent_mu, basis @ latent_cov @ basis.T
    gray = np.full((B, 1, 1, 3), 0.7, np.float32)
    rgb, _ = controllable.colorize(jax.random.PRNGKey(1), sde, gaussian_score(sde, mu, cov),
                                   jnp.asarray(gray))
    rgb = np.asarray(rgb)
    np.testing.assert_allclose(rgb.mean(-1), 0.7, atol=1e-6)
    colours = rgb.reshape(B, 3) @ basis[:, 1:]
    _check_gaussian(colours, latent_mu[1:], latent_cov[1:, 1:])


def test_gray_projection_and_basis_orthonormal():
    np.testing.assert_allclose(controllable.COLOR_BASIS.T @ controllable.COLOR_BASIS, np.eye(3),
                               atol=1e-12)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3, 3)), jnp.float32)
    np.testing.assert_allclose(controllable.gray_projection(x),
                               np.repeat(np.asarray(x).mean(-1, keepdims=True), 3, -1), atol=1e-6)


@pytest.mark.parametrize("name", sorted(SDES))
def test_conditional_sample_draws_the_chosen_component(name):
    sde = SDES[name]
    means = np.array([[-1.5, 0.0], [1.5, 0.0]], np.float32)
    s2 = 0.25

    def component_logits(x, t):
        a, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
        var = a ** 2 * s2 + std[:, None] ** 2                                      # [B, 1]
        d2 = jnp.sum((x[:, None, :] - a[:, :, None] * means[None]) ** 2, -1)      # [B, 2]
        return -0.5 * d2 / var

    def mixture_score(x, t):
        a, std = sde.marginal_prob(jnp.ones((t.shape[0], 1)), t)
        var = a ** 2 * s2 + std[:, None] ** 2
        w = jax.nn.softmax(component_logits(x, t), -1)                            # [B, 2]
        target = w @ jnp.asarray(means)
        return (a * target - x) / var

    n = 400
    labels = jnp.asarray(np.arange(n) % 2, jnp.int32)
    x, _ = controllable.conditional_sample(jax.random.PRNGKey(2), sde, mixture_score,
                                           component_logits, labels, shape=(n, 2))
    chosen = np.asarray(x)[:, 0] > 0
    assert np.mean(chosen == (np.asarray(labels) == 1)) > 0.95


def test_make_mask_kinds():
    shape = (2, 8, 8, 1)
    left = controllable.make_mask("left_half", shape)
    assert left[:, :, :4].min() == 1 and left[:, :, 4:].max() == 0
    box = controllable.make_mask("centre_box", shape)
    assert box.sum() == 2 * (64 - 16) and box[:, 2:6, 2:6].max() == 0
    rnd = controllable.make_mask("random_pixels", shape, jax.random.PRNGKey(0), fraction=0.5)
    assert set(np.unique(rnd)) <= {0.0, 1.0} and 0.3 < rnd.mean() < 0.7
    with pytest.raises(ValueError):
        controllable.make_mask("circle", shape)

"""Latent tools: slerp closed-form properties; encode -> decode round trips on an analytic score."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import latent
from score_jax import sde as sde_lib
from tests.test_controllable import gaussian_score

MU = np.array([0.5, -0.2, 0.1, 0.3])
COV = np.diag([0.5, 0.3, 0.8, 0.4])
SDES = {"ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), "vp": sde_lib.VPSDE()}


def test_slerp_endpoints_exact_and_norm_preserved():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    b = b / np.linalg.norm(b, axis=1, keepdims=True) * np.linalg.norm(a, axis=1, keepdims=True)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    path = np.asarray(latent.slerp(a, b, jnp.linspace(0.0, 1.0, 7)))
    np.testing.assert_array_equal(path[0], a)
    np.testing.assert_array_equal(path[-1], b)
    np.testing.assert_allclose(np.linalg.norm(path, axis=-1),
                               np.broadcast_to(np.linalg.norm(a, axis=-1), (7, 3)), rtol=1e-5)
    # The midpoint of a great-circle arc is the normalised sum.
    mid = (a + b) / np.linalg.norm(a + b, axis=1, keepdims=True) * np.linalg.norm(a, axis=1,
                                                                                  keepdims=True)
    np.testing.assert_allclose(path[3], mid, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SDES))
def test_round_trip_and_interpolation_endpoints(name):
    sde = SDES[name]
    score = gaussian_score(sde, MU, COV)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)) * 0.5 + MU, jnp.float32)
    report = latent.round_trip_error(sde, score, x, rtol=1e-6, atol=1e-6)
    assert report["max_abs_error"] < 1e-3 and report["nfe_encode"] > 0
    images, nfe = latent.interpolate(sde, score, x[:3], x[3:], 4, rtol=1e-6, atol=1e-6)
    assert images.shape == (4, 3, 4) and nfe > 0
    np.testing.assert_allclose(images[0], x[:3], atol=1e-3)
    np.testing.assert_allclose(images[-1], x[3:], atol=1e-3)


def test_temperature_zero_point_and_shape():
    sde = SDES["vp"]
    score = gaussian_score(sde, MU, COV)
    x, _ = latent.temperature_sample(jax.random.PRNGKey(0), sde, score, (500, 4), 1.0)
    # Temperature 1 decodes the prior to the data distribution.
    np.testing.assert_allclose(np.asarray(x).mean(0), MU, atol=0.15)
    np.testing.assert_allclose(np.asarray(x).var(0), np.diag(COV), rtol=0.25)

"""Truncated-normal dequantisation against scipy's truncnorm and a bound that is tight by design.

If the continuous density inside every pixel cell has the shape of the dequantisation noise,
p(x) = P(k) 256^D q(u), the bound -log P(k) <= -log p(x) + log q(u) + D log 256 holds with
equality for every draw, so the corrected bits/dim must equal -log2 P(k) / D exactly.
"""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from score_jax import dequantization as dq
from score_jax.errors import InvalidInputError

SCALES = (0.15, 0.5, 2.0)


@pytest.mark.parametrize("scale", SCALES)
def test_density_integrates_to_one_and_entropy_closed_form(scale):
    q = lambda u: math.exp(dq.truncated_normal_log_density(np.array(u), scale))  # noqa: E731
    mass, _ = integrate.quad(q, 0.0, 1.0)
    np.testing.assert_allclose(mass, 1.0, rtol=1e-10)
    entropy, _ = integrate.quad(lambda u: -q(u) * math.log(q(u)), 0.0, 1.0)
    np.testing.assert_allclose(dq.truncated_normal_entropy(scale), entropy, rtol=1e-8, atol=1e-12)
    ref = stats.truncnorm(-0.5 / scale, 0.5 / scale, loc=0.5, scale=scale)
    np.testing.assert_allclose(dq.truncated_normal_entropy(scale), ref.entropy(), rtol=1e-8)
    assert np.isneginf(dq.truncated_normal_log_density(np.array([-0.1, 1.1]), scale)).all()


@pytest.mark.parametrize("scale", SCALES)
def test_noise_follows_the_truncated_normal_and_stays_in_range(scale):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2000, 4, 4, 1), dtype=np.uint8)
    images[0] = 255
    x, log_q = dq.dequantize_truncated_normal(images, rng, scale)
    assert x.dtype == np.float32 and x.shape == images.shape
    assert x.min() >= 0.0 and x.max() < 1.0
    np.testing.assert_array_equal(np.floor(x.astype(np.float64) * 256), images)
    u = (x.astype(np.float64) * 256 - images).reshape(-1)
    ref = stats.truncnorm(-0.5 / scale, 0.5 / scale, loc=0.5, scale=scale)
    assert stats.kstest(u, ref.cdf).pvalue > 1e-3
    # Mean log q per dimension is minus the entropy, within 5 standard errors.
    per_dim = log_q / 16
    assert abs(per_dim.mean() + ref.entropy()) < 5 * per_dim.std() / math.sqrt(per_dim.size)


def test_corrected_bpd_is_exact_when_the_density_matches_the_noise():
    scale, dim = 0.3, 6
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(256))                       # P(k) per dimension, independent
    images = rng.choice(256, size=(500, dim), p=probs).astype(np.uint8)
    x, log_q = dq.dequantize_truncated_normal(images, rng, scale)
    u = x.astype(np.float64) * 256 - images
    noise = stats.truncnorm(-0.5 / scale, 0.5 / scale, loc=0.5, scale=scale)
    log_p = np.sum(np.log(probs[images]) + math.log(256) + noise.logpdf(u), axis=1)
    bpd_uniform_formula = -log_p / (dim * math.log(2)) + 8      # the official offset, [0, 1] data
    bpd = bpd_uniform_formula + dq.bpd_correction(log_q, dim)
    np.testing.assert_allclose(bpd, -np.log2(probs[images]).sum(axis=1) / dim, atol=2e-5)


@pytest.mark.parametrize("args,match", [
    ((np.zeros((2, 3), np.float32), np.random.default_rng(0)), "uint8"),
    ((np.zeros((2, 3), np.uint8), 0), "numpy Generator"),
    ((np.zeros((2, 3), np.uint8), np.random.default_rng(0), 0.0), "scale must be"),
])
def test_bad_input_raises(args, match):
    with pytest.raises(InvalidInputError, match=match):
        dq.dequantize_truncated_normal(*args)

"""cpu.sums' bias additions and score_jax's Conv against the plain formulas under autodiff, and
score_jax's Conv against flax.linen.Conv (same parameters, outputs and gradients)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.models.cpu import sums as cpu_sums
from score_jax.models.cpu.conv import Conv


def test_spatial_sum_is_the_sum():
    a = jax.random.normal(jax.random.PRNGKey(2), (3, 5, 7, 4))
    np.testing.assert_allclose(cpu_sums.spatial_sum(a), a.sum(axis=(1, 2)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 16, 16, 8), (3, 4, 4, 8)])  # products / plain on the CPU
def test_bias_additions_match_the_plain_formula(shape):
    assert cpu_sums.use_products(jnp.zeros(shape)) == (shape[1] * shape[2] >= 256)
    ky, kb, kw = jax.random.split(jax.random.PRNGKey(0), 3)
    y, w = jax.random.normal(ky, shape), jax.random.normal(kw, shape)
    b, v = jax.random.normal(kb, shape[-1:]), jax.random.normal(kb, (shape[0], shape[-1]))
    cases = [(cpu_sums.add_bias, lambda y, b: y + b[None, None, None, :], b),
             (cpu_sums.add_example_bias, lambda y, v: y + v[:, None, None, :], v)]
    for ours, plain, p in cases:
        np.testing.assert_array_equal(ours(y, p), plain(y, p))
        loss = lambda f: lambda y, p: jnp.sum(jnp.sin(f(y, p)) * w)  # noqa: E731
        for a, e in zip(jax.grad(loss(ours), (0, 1))(y, p), jax.grad(loss(plain), (0, 1))(y, p)):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs,shape", [
    (dict(kernel_size=(3, 3), padding="SAME"), (2, 16, 16, 3)),
    (dict(kernel_size=(1, 1), strides=(2, 2), padding="SAME"), (2, 32, 32, 4)),
    (dict(kernel_size=(3, 3), padding="VALID", kernel_dilation=(2, 2)), (2, 20, 20, 3)),
    (dict(kernel_size=(3, 3), padding=1), (2, 8, 8, 3)),   # flax's own code
    (dict(kernel_size=(3, 3), use_bias=False), (2, 16, 16, 3)),
])
def test_conv_matches_flax(kwargs, shape):
    kx, kp = jax.random.split(jax.random.PRNGKey(1))
    x = jax.random.normal(kx, shape)
    ours, theirs = Conv(5, bias_init=nn.initializers.normal(1.0), **kwargs), \
        nn.Conv(5, bias_init=nn.initializers.normal(1.0), **kwargs)
    v_ours, v_theirs = ours.init(kp, x), theirs.init(kp, x)
    # Same tree and the same initial values: the parameters draw the same keys in the same order.
    jax.tree_util.tree_map(np.testing.assert_array_equal, v_ours, v_theirs)
    np.testing.assert_allclose(ours.apply(v_ours, x), theirs.apply(v_theirs, x), rtol=1e-5,
                               atol=1e-5)
    loss = lambda m: lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))  # noqa: E731
    g_ours = jax.grad(loss(ours), (0, 1))(v_ours, x)
    g_theirs = jax.grad(loss(theirs), (0, 1))(v_theirs, x)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                           g_ours, g_theirs)


def test_conv_keeps_flax_dtype_promotion():
    x = jnp.ones((1, 16, 16, 2), jnp.bfloat16)
    ours, theirs = Conv(3, (3, 3), dtype=jnp.bfloat16), nn.Conv(3, (3, 3), dtype=jnp.bfloat16)
    v = theirs.init(jax.random.PRNGKey(0), x)
    assert ours.apply(v, x).dtype == theirs.apply(v, x).dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ours.apply(v, x), np.float32),
                               np.asarray(theirs.apply(v, x), np.float32), rtol=1e-2, atol=1e-2)

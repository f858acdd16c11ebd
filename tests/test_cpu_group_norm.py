"""score_jax's GroupNorm against flax.linen.GroupNorm (autodiff of flax's formula): same parameter
tree, outputs and gradients to float32 rounding, on the CPU's fused path and flax's own."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.models.cpu import group_norm as gn_lib
from score_jax.models.cpu import sums as cpu_sums


def _loss(norm, variables, x, w):
    """A scalar that weights every output element differently, so every gradient entry counts."""
    return jnp.sum(jnp.sin(norm.apply(variables, x).astype(jnp.float32)) * w)


# 16x16 and 8x32 take the fused path on the CPU (cpu_sums.MIN_POSITIONS), the others the plain one.
@pytest.mark.parametrize("shape,groups,eps", [((2, 16, 16, 32), 8, 1e-6), ((3, 8, 32, 12), 3, 1e-5),
                                              ((3, 8, 8, 64), 16, 1e-6), ((2, 5, 6), 2, 1e-6)])
def test_matches_flax_forward_and_gradients(shape, groups, eps):
    kx, kp, kw = jax.random.split(jax.random.PRNGKey(0), 3)
    x = 3.0 * jax.random.normal(kx, shape) + 1.5  # a mean far from 0 stresses E[x^2] - E[x]^2
    w = jax.random.normal(kw, shape)
    ours, theirs = gn_lib.GroupNorm(num_groups=groups, epsilon=eps), nn.GroupNorm(groups, epsilon=eps)
    v_ours, v_theirs = ours.init(kp, x), theirs.init(kp, x)
    assert jax.tree_util.tree_structure(v_ours) == jax.tree_util.tree_structure(v_theirs)
    # Non-trivial scale and bias, shared by both layers.
    c = shape[-1]
    params = {"params": {"scale": 1.0 + 0.1 * jnp.arange(c, dtype=jnp.float32),
                         "bias": 0.05 * jnp.arange(c, dtype=jnp.float32) - 1.0}}
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=2e-5, atol=2e-5)
    g_ours = jax.grad(lambda p, x: _loss(ours, p, x, w), argnums=(0, 1))(params, x)
    g_theirs = jax.grad(lambda p, x: _loss(theirs, p, x, w), argnums=(0, 1))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_theirs)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_fused_function_matches_flax_at_any_size():
    """The fused VJP itself, also below cpu_sums.MIN_POSITIONS (where the layer calls flax)."""
    assert cpu_sums.MIN_POSITIONS <= 256
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 8))
    scale, bias = jnp.linspace(0.5, 2.0, 8), jnp.linspace(-1.0, 1.0, 8)
    fused = gn_lib._make_fused(4, 1e-6)
    flax_gn = nn.GroupNorm(num_groups=4)
    plain = lambda x, s, b: flax_gn.apply({"params": {"scale": s, "bias": b}}, x)  # noqa: E731
    np.testing.assert_allclose(fused(x, scale, bias), plain(x, scale, bias), rtol=1e-6, atol=1e-6)
    loss = lambda f: lambda *a: jnp.sum(f(*a) ** 3)  # noqa: E731
    for a, b in zip(jax.grad(loss(fused), argnums=(0, 1, 2))(x, scale, bias),
                    jax.grad(loss(plain), argnums=(0, 1, 2))(x, scale, bias)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_bf16_compute_keeps_float32_statistics():
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 4, 16)) * 4 + 2
    ours = gn_lib.GroupNorm(num_groups=4, dtype=jnp.bfloat16)
    theirs = nn.GroupNorm(num_groups=4, dtype=jnp.bfloat16)
    v = theirs.init(jax.random.PRNGKey(0), x)
    y_ours, y_theirs = ours.apply(v, x.astype(jnp.bfloat16)), theirs.apply(v, x.astype(jnp.bfloat16))
    assert y_ours.dtype == y_theirs.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y_ours, np.float32), np.asarray(y_theirs, np.float32),
                               rtol=1e-2, atol=1e-2)


def test_groups_must_divide_channels():
    with pytest.raises(ValueError, match="does not divide"):
        gn_lib.GroupNorm(num_groups=3).init(jax.random.PRNGKey(0), jnp.zeros((1, 2, 2, 8)))

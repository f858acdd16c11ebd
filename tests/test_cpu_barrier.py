"""grad_barrier: the identity in value and in its VJP (bit for bit), the same gradients through a
network to float32 rounding (XLA fuses the surrounding code differently), NaN cotangents stay
NaN, and on the CPU the compiled gradient keeps the loop that materialises the cotangent."""

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.models import layerspp
from score_jax.models.cpu.barrier import grad_barrier, materialize


def _loss(barrier: bool):
    def loss(x):
        h = x
        for _ in range(3):  # a residual chain whose cotangent XLA would otherwise recompute
            h = jnp.tanh(h) * 1.5 + h / np.sqrt(2.0)
            h = grad_barrier(h) if barrier else h
        return jnp.sum(jnp.sin(h) * jnp.arange(h.size).reshape(h.shape) / h.size)
    return loss


def test_identity_in_value_and_gradient():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 3))
    np.testing.assert_array_equal(grad_barrier(x), x)
    g = jax.random.normal(jax.random.PRNGKey(3), x.shape) * 1e3
    np.testing.assert_array_equal(jax.jit(lambda g: jax.vjp(grad_barrier, x)[1](g)[0])(g), g)
    for compile_ in (lambda f: f, jax.jit):
        with_b = compile_(jax.grad(_loss(True)))(x)
        without = compile_(jax.grad(_loss(False)))(x)
        np.testing.assert_allclose(with_b, without, rtol=1e-5, atol=1e-6)
    # Second order: the barrier's VJP is itself differentiable (the identity again).
    hvp = lambda loss: jax.jvp(jax.grad(loss), (x,), (jnp.ones_like(x),))[1]  # noqa: E731
    np.testing.assert_allclose(hvp(_loss(True)), hvp(_loss(False)), rtol=1e-6, atol=1e-6)


def test_nan_cotangent_stays_nan():
    x = jnp.array([1.0, 2.0, 3.0])
    g = jax.vjp(grad_barrier, x)[1](jnp.array([jnp.nan, 1.0, -0.0]))[0]
    assert np.isnan(g[0]) and g[1] == 1.0 and np.signbit(g[2])
    g = jax.vjp(grad_barrier, x)[1](jnp.array([2.0, jnp.inf, -3.0]))[0]
    np.testing.assert_array_equal(g, [2.0, np.inf, -3.0])


def test_compiled_gradient_keeps_the_loop_on_cpu():
    x = jnp.ones((2, 4, 4, 3))
    text = jax.jit(jax.grad(_loss(True))).lower(x).compile().as_text()
    assert jax.default_backend() != "cpu" or text.count(" while(") == 3
    assert " while(" not in jax.jit(jax.grad(_loss(False))).lower(x).compile().as_text()


def test_skip_sum_keeps_its_value_and_gradient():
    x, h = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 8, 8, 4))
    for rescale in (True, False):
        plain = lambda x, h: (x + h) / np.sqrt(2.0) if rescale else x + h  # noqa: E731
        np.testing.assert_allclose(layerspp.skip_sum(x, h, rescale), plain(x, h), rtol=1e-7)
        loss = lambda f: lambda x, h: jnp.sum(jnp.cos(f(x, h)))  # noqa: E731
        for a, b in zip(jax.grad(loss(lambda x, h: layerspp.skip_sum(x, h, rescale)), (0, 1))(x, h),
                        jax.grad(loss(plain), (0, 1))(x, h)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_materialize_any_dtype_bit_for_bit_and_kept():
    key = jax.random.PRNGKey(4)
    values = [jax.random.bits(key, (5, 7)), jax.random.bernoulli(key, 0.5, (5, 7)),
              jax.random.randint(key, (5, 7), -100, 100).astype(jnp.int8), jnp.array([True, False, True]),
              jnp.array([jnp.nan, -0.0, jnp.inf], jnp.bfloat16), jnp.array([0, 2**31 - 1], jnp.int32)]
    for x in values:
        out = jax.jit(materialize)(x)
        assert out.dtype == x.dtype
        np.testing.assert_array_equal(np.asarray(out).view(np.uint8), np.asarray(x).view(np.uint8))
        from_source = jax.jit(lambda v, s: materialize(v, source=s))(x, jnp.uint32(7))
        np.testing.assert_array_equal(np.asarray(from_source).view(np.uint8), np.asarray(x).view(np.uint8))
        assert " while(" in jax.jit(lambda v: materialize(v) ^ True if v.dtype == bool else materialize(v) + 1).lower(
            x).compile().as_text()

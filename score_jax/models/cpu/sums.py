"""Sums over the spatial axes as matrix products with ones, and bias additions whose gradients use them.

Why: XLA:CPU fuses a reduction with the elementwise chain that produces its operand and duplicates
that chain into every reduction that reads it. In a train step the operand of each bias gradient
(sum of the upstream gradient over batch and positions) is the backward pass of everything above
the layer up to the next convolution: the GroupNorm and swish backward formulas of several blocks,
joined by the skip connections. Measured on a 2-core Intel Xeon (AVX-512), the CIFAR-10 DDPM++
train step at batch 8 spent 1.55 s of thread time per step in convolution-bias reductions that
recompute such chains (the longest 230 ms for one [128] bias). A matrix product is a library
call that XLA does not fuse into, so the operand is computed once and read by a GEMV.

On GPU and TPU, below MIN_POSITIONS spatial positions (where the products lose to XLA's
reductions), and with SCORE_JAX_CPU_BIAS_SUMS=0, the bias additions are the plain formula under
autodiff.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from score_jax.models.cpu.switches import enabled

Array = jax.Array

# Below this many spatial positions (16 x 16) the products lose: measured on a 2-core AMD EPYC,
# GroupNorm's forward + backward at [64, 8, 8, 32] took 1.0 ms with products and 0.5 ms by
# autodiff, at [8, 8, 8, 256] 1.0 and 1.0 ms, at [8, 16, 16, 256] 2.7 and 6.1 ms.
MIN_POSITIONS = 256


def use_products(x: Array) -> bool:
    """Whether sums over the middle axes of x [N, ..., C] are computed as products here."""
    return jax.default_backend() == "cpu" and x.ndim >= 3 and math.prod(x.shape[1:-1]) >= MIN_POSITIONS


def spatial_sum(a: Array) -> Array:
    """Sum of a [N, ..., C] over its middle axes -> [N, C], as a batched matrix product."""
    n, c = a.shape[0], a.shape[-1]
    a = a.reshape(n, -1, c)
    ones = jnp.ones((n, 1, a.shape[1]), a.dtype)
    out = jax.lax.dot_general(ones, a, (((2,), (1,)), ((0,), (0,))),
                              precision=jax.lax.Precision.HIGHEST,
                              preferred_element_type=jnp.promote_types(a.dtype, jnp.float32))
    return out[:, 0]


def _channel_sum(a: Array) -> Array:
    """Sum of a [N, ..., C] over all axes but the last -> [C], as one matrix-vector product."""
    flat = a.reshape(1, -1, a.shape[-1])
    return spatial_sum(flat)[0]


def _plain_add(y: Array, v: Array, per_example: bool) -> Array:
    """y [N, ..., C] + v ([N, C] if per_example else [C]) broadcast over the positions."""
    lead = (v.shape[0],) if per_example else (1,)
    return y + v.astype(y.dtype).reshape(lead + (1,) * (y.ndim - 2) + (v.shape[-1],))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _add(y: Array, v: Array, per_example: bool) -> Array:
    return _plain_add(y, v, per_example)


def _add_fwd(y, v, per_example):
    return _plain_add(y, v, per_example), v


def _add_bwd(per_example, v, g):
    sums = spatial_sum(g) if per_example else _channel_sum(g)
    return g, sums.astype(v.dtype)


_add.defvjp(_add_fwd, _add_bwd)


def _products(y: Array) -> bool:
    return enabled("bias_sums") and use_products(y)


def add_bias(y: Array, b: Array) -> Array:
    """y [N, ..., C] + b [C] (in y's dtype); on the CPU its gradient in b is a product with ones."""
    return (_add if _products(y) else _plain_add)(y, b, False)


def add_example_bias(y: Array, v: Array) -> Array:
    """y [N, ..., C] + v [N, C] at every position; on the CPU its gradient in v is a product."""
    return (_add if _products(y) else _plain_add)(y, v, True)

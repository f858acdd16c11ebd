"""GroupNorm with flax's parameters and maths, and a hand-written gradient that is fast on XLA:CPU.

`GroupNorm` is a drop-in for `flax.linen.GroupNorm` as the score networks use it (num_groups,
epsilon, dtype; parameters `scale` and `bias` of shape [C], float32 statistics, the variance as
E[x^2] - E[x]^2 clipped at 0), so parameter trees, checkpoints and the official parity hold.

Why: differentiated by autodiff on XLA:CPU, the statistics and the scale / bias gradients become
reduce fusions over [B, H, W] that recompute long elementwise chains and run as slow strided
loops. Here each such sum over the spatial axes is a batched matrix product with a ones matrix
(Eigen's GEMM), and the backward pass is the closed form
  dx = rstd * (g * scale - mean_group(g * scale) - xhat * mean_group(g * scale * xhat)),
with the four spatial sums shared between dx, d scale and d bias. Measured on a 2-core AMD EPYC:
GroupNorm + swish forward and backward at [8, 32, 32, 128] 32.6 -> 20.3 ms, the CIFAR-10 DDPM++
train step at batch 8 8.42 -> 7.79 s (bench/group_norm.py). On GPU and TPU, where XLA's reductions
are already fast, the layer computes flax's formula and autodiff differentiates it.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
Dtype = Any


def spatial_sum(a: Array) -> Array:
    """Sum of a [N, ..., C] over its middle axes -> [N, C], as a matrix product on the CPU."""
    n, c = a.shape[0], a.shape[-1]
    a = a.reshape(n, -1, c)
    if jax.default_backend() != "cpu":
        return a.sum(axis=1)
    # Two rows of ones, not one: XLA rewrites a matrix-vector product back into a reduction.
    ones = jnp.ones((n, 2, a.shape[1]), a.dtype)
    out = jax.lax.dot_general(ones, a, (((2,), (1,)), ((0,), (0,))),
                              precision=jax.lax.Precision.HIGHEST)
    return out[:, 0]


def _group_mean(s: Array, groups: int, count: int) -> Array:
    """Per-channel sums s [N, C] -> per-group means broadcast to [N, 1, G, C // G]."""
    n, c = s.shape
    return (s.reshape(n, groups, c // groups).sum(-1) / count)[:, None, :, None]


def _stats(x: Array, groups: int, epsilon: float) -> tuple[Array, Array]:
    """Group mean and 1/std of x [N, S, G, C // G] (float32), each [N, 1, G, 1]."""
    n, s, g, cg = x.shape
    flat = x.reshape(n, s, g * cg)
    mean = _group_mean(spatial_sum(flat), groups, s * cg)
    mean2 = _group_mean(spatial_sum(flat * flat), groups, s * cg)
    var = jnp.maximum(mean2 - mean * mean, 0.0)
    return mean[..., :1], jax.lax.rsqrt(var[..., :1] + epsilon)


def _grouped(x: Array, groups: int) -> Array:
    """x [N, ..., C] as float32 (or wider) [N, S, G, C // G]."""
    xf = x.astype(jnp.promote_types(jnp.float32, x.dtype))
    return xf.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)


def _normalize(xg: Array, mean: Array, rstd: Array, scale: Array, bias: Array) -> Array:
    """flax's (x - mean) * (rstd * scale) + bias on the grouped view [N, S, G, C // G]."""
    g = xg.shape[2]
    return (xg - mean) * (rstd * scale.reshape(1, 1, g, -1)) + bias.reshape(1, 1, g, -1)


def group_norm(x: Array, scale: Array, bias: Array, groups: int, epsilon: float) -> Array:
    """(x - mean) * rstd * scale + bias per group of x [N, ..., C] (float32 result) by flax's formula."""
    xg = _grouped(x, groups)
    return _normalize(xg, *_stats(xg, groups, epsilon), scale, bias).reshape(x.shape)


def _make_fused(groups: int, epsilon: float):
    """group_norm(x, scale, bias) for fixed groups / epsilon with the closed-form VJP."""

    def fwd(x, scale, bias):
        xg = _grouped(x, groups)
        mean, rstd = _stats(xg, groups, epsilon)
        return _normalize(xg, mean, rstd, scale, bias).reshape(x.shape), (x, mean, rstd, scale, bias)

    @jax.custom_vjp
    def fused(x, scale, bias):
        return fwd(x, scale, bias)[0]

    def bwd(res, g):
        x, mean, rstd, scale, bias = res
        xg = _grouped(x, groups)
        n, _, _, cg = xg.shape
        xhat = (xg - mean) * rstd
        g = g.astype(xg.dtype).reshape(xg.shape)
        s_g = spatial_sum(g.reshape(n, -1, groups * cg))           # d bias per example [N, C]
        s_gx = spatial_sum((g * xhat).reshape(n, -1, groups * cg))  # d scale per example [N, C]
        count = xg.shape[1] * cg
        sc = scale.astype(xg.dtype)[None, :]
        dx = rstd * (g * sc.reshape(1, 1, groups, cg) - _group_mean(s_g * sc, groups, count)
                     - xhat * _group_mean(s_gx * sc, groups, count))
        return (dx.reshape(x.shape).astype(x.dtype), s_gx.sum(0).astype(scale.dtype),
                s_g.sum(0).astype(bias.dtype))

    fused.defvjp(fwd, bwd)
    return fused


class GroupNorm(nn.Module):
    """flax.linen.GroupNorm's layer for x [N, ..., C]: `num_groups` groups, parameters scale, bias [C]."""

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Optional[Dtype] = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        if self.num_groups <= 0 or c % self.num_groups:
            raise ValueError(f"Number of groups ({self.num_groups}) does not divide the number "
                             f"of channels ({c}).")
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        if jax.default_backend() == "cpu":
            y = _make_fused(self.num_groups, self.epsilon)(x, scale, bias)
        else:
            y = group_norm(x, scale, bias, self.num_groups, self.epsilon)
        return y.astype(self.dtype or jnp.result_type(x, scale, bias))

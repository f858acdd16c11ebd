"""GroupNorm with flax's parameters and maths, and a hand-written gradient that is fast on XLA:CPU.

`GroupNorm` is a drop-in for `flax.linen.GroupNorm` as the score networks use it (num_groups,
epsilon, dtype; parameters `scale` and `bias` of shape [C], float32 statistics, the variance as
E[x^2] - E[x]^2 clipped at 0), so parameter trees, checkpoints and the official parity hold.

Why: differentiated by autodiff on XLA:CPU, the statistics and the scale / bias gradients become
reduce fusions over [B, H, W] that recompute long elementwise chains and run as slow strided
loops. Here each such sum over the spatial axes is a batched matrix product with a ones matrix
(Eigen's GEMM), and the backward pass is the closed form
  dx = rstd * (g * scale - mean_group(g * scale) - xhat * mean_group(g * scale * xhat)),
with the four spatial sums shared between dx, d scale and d bias. Measured on a 2-core AMD EPYC
(bench/group_norm.py): GroupNorm + swish forward and backward at [8, 32, 32, 128] 11.2 -> 6.3 ms;
the CIFAR-10 DDPM++ train step at batch 8 8.42 -> 7.79 s in one run and 7.72 -> 7.71 s in another,
so the step gain is within this machine's noise. At small spatial sizes (the digits
network's 8x8 and 4x4) the products lose, and on GPU and TPU XLA's reductions are already fast:
there the layer runs flax's own code under autodiff, as it does everywhere with SCORE_JAX_CPU_GROUP_NORM=0.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.models.cpu.sums import spatial_sum, use_products
from score_jax.models.cpu.switches import enabled

Array = jax.Array


def _group_mean(s: Array, groups: int, count: int) -> Array:
    """Per-channel sums s [N, C] -> per-group means broadcast to [N, 1, G, C // G]."""
    n, c = s.shape
    return (s.reshape(n, groups, c // groups).sum(-1) / count)[:, None, :, None]


def _stats(x: Array, groups: int, epsilon: float) -> tuple[Array, Array]:
    """Group mean and 1/std of x [N, S, G, C // G] (float32), each [N, 1, G, 1]."""
    n, s, g, cg = x.shape
    flat = x.reshape(n, s, g * cg)
    mean = _group_mean(spatial_sum(flat), groups, s * cg)[..., :1]
    mean2 = _group_mean(spatial_sum(flat * flat), groups, s * cg)[..., :1]
    var = jnp.maximum(mean2 - mean * mean, 0.0)
    return mean, jax.lax.rsqrt(var + epsilon)


def _grouped(x: Array, groups: int) -> Array:
    """x [N, ..., C] as float32 (or wider) [N, S, G, C // G]."""
    xf = x.astype(jnp.promote_types(jnp.float32, x.dtype))
    return xf.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)


def _normalize(xg: Array, mean: Array, rstd: Array, scale: Array, bias: Array) -> Array:
    """flax's (x - mean) * (rstd * scale) + bias on the grouped view [N, S, G, C // G]."""
    g = xg.shape[2]
    return (xg - mean) * (rstd * scale.reshape(1, 1, g, -1)) + bias.reshape(1, 1, g, -1)


def _make_fused(groups: int, epsilon: float):
    """flax's GroupNorm as a function (x, scale, bias) -> [N, ..., C] with the closed-form VJP."""

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


class GroupNorm(nn.GroupNorm):
    """flax.linen.GroupNorm, with the fused gradient on the CPU from 16x16 positions up."""

    @nn.compact
    def __call__(self, x: Array, *, mask: Optional[Array] = None) -> Array:
        fused = (enabled("group_norm") and use_products(x) and mask is None and self.group_size is None
                 and self.axis_name is None and self.use_bias and self.use_scale and self.use_fast_variance
                 and self.reduction_axes is None and self.num_groups > 0
                 and x.shape[-1] % self.num_groups == 0)
        if not fused:
            return super().__call__(x, mask=mask)
        c = x.shape[-1]
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype)
        y = _make_fused(self.num_groups, self.epsilon)(x, scale, bias)
        return y.astype(self.dtype or jnp.result_type(x, scale, bias))

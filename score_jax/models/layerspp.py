"""NCSN++ / DDPM++ layers with the official score_sde module names (`models/layerspp.py`).

Module class names, submodule creation order and initialisers follow the official code, so that
parameter paths (e.g. `ResnetBlockBigGANpp_3/Conv_1/kernel`, `AttnBlockpp_0/NIN_2/W`) and initial
values match its checkpoints. `dtype` (default None: float32 as officially) is the compute dtype;
parameters stay float32 and GroupNorm statistics are reduced in float32 (flax's default).

References:
  Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021, appendix H.
  Brock et al., "Large Scale GAN Training for High Fidelity Natural Image Synthesis", ICLR 2019 (BigGAN block).
  Tancik et al., "Fourier Features Let Networks Learn High Frequency Functions", NeurIPS 2020.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.models import cpu
from score_jax.models import up_or_down_sampling as updown
from score_jax.models.layers import (NIN, ddpm_conv1x1, ddpm_conv3x3, default_init,
                                     nearest_upsample_2x, spatial_attention)
from score_jax.errors import InvalidInputError

Array = jax.Array
Dtype = Any

SQRT2 = math.sqrt(2.0)  # dividing a sum of two unit-variance branches by it keeps variance 1
COMBINE_METHODS = ("cat", "sum")


def group_norm(channels: int, dtype: Optional[Dtype] = None) -> nn.GroupNorm:
    """The NCSN++ GroupNorm: min(C // 4, 32) groups, created in the caller's scope."""
    return cpu.GroupNorm(num_groups=min(channels // 4, 32), dtype=dtype)


def skip_sum(x: Array, h: Array, skip_rescale: bool) -> Array:
    """Residual sum x + h, divided by sqrt(2) when skip_rescale."""
    return cpu.grad_barrier((x + h) / SQRT2 if skip_rescale else x + h)


class GaussianFourierProjection(nn.Module):
    """Random Fourier features of log-noise levels, fixed W ~ N(0, scale^2): x [B] -> [B, 2 embedding_size]."""

    embedding_size: int = 256
    scale: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        w = self.param("W", jax.nn.initializers.normal(stddev=self.scale), (self.embedding_size,))
        # W is a fixed random projection, not trained (it is stored among params for checkpoints).
        w = jax.lax.stop_gradient(w)
        x_proj = x[:, None] * w[None, :] * 2 * jnp.pi
        return jnp.concatenate([jnp.sin(x_proj), jnp.cos(x_proj)], axis=-1)


class Combine(nn.Module):
    """Merge a pyramid image x into features y via a 1x1 conv: x [B,H,W,Cx], y [B,H,W,Cy] -> cat or sum."""

    method: str = "cat"
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        if self.method not in COMBINE_METHODS:
            raise InvalidInputError(f"progressive_combine: got {self.method!r}, expected one of {COMBINE_METHODS}.")
        h = ddpm_conv1x1(x, y.shape[-1], dtype=self.dtype)
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        return h + y


class AttnBlockpp(nn.Module):
    """Self-attention over all pixels with residual (NCSN++): x [B,H,W,C] -> [B,H,W,C]."""

    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        h = group_norm(c, self.dtype)(x)
        q = NIN(c, dtype=self.dtype)(h)
        k = NIN(c, dtype=self.dtype)(h)
        v = NIN(c, dtype=self.dtype)(h)
        h = spatial_attention(q, k, v)
        h = NIN(c, init_scale=self.init_scale, dtype=self.dtype)(h)
        return skip_sum(x, h, self.skip_rescale)


class Upsample(nn.Module):
    """2x upsampling, nearest or FIR, optionally with a (fused) 3x3 conv: x [B,H,W,C] -> [B,2H,2W,out_ch]."""

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch if self.out_ch else x.shape[-1]
        if not self.fir:
            h = nearest_upsample_2x(x)
            if self.with_conv:
                h = ddpm_conv3x3(h, out_ch, dtype=self.dtype)
            return h
        if not self.with_conv:
            return updown.upsample_2d(x, self.fir_kernel, factor=2)
        return updown.Conv2d(out_ch, kernel=3, up=True, resample_kernel=self.fir_kernel, use_bias=True,
                             kernel_init=default_init(), dtype=self.dtype)(x)


class Downsample(nn.Module):
    """2x downsampling, strided conv / average pool or FIR: x [B,H,W,C] -> [B,H/2,W/2,out_ch]."""

    out_ch: Optional[int] = None
    with_conv: bool = False
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        out_ch = self.out_ch if self.out_ch else x.shape[-1]
        if not self.fir:
            if self.with_conv:
                return ddpm_conv3x3(x, out_ch, stride=2, dtype=self.dtype)
            return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")
        if not self.with_conv:
            return updown.downsample_2d(x, self.fir_kernel, factor=2)
        return updown.Conv2d(out_ch, kernel=3, down=True, resample_kernel=self.fir_kernel, use_bias=True,
                             kernel_init=default_init(), dtype=self.dtype)(x)


def _add_time_bias(h: Array, temb: Optional[Array], act: Callable[[Array], Array], out_ch: int,
                   dtype: Optional[Dtype]) -> Array:
    """Add a per-channel bias Dense(act(temb)) [B, out_ch] to h [B,H,W,out_ch] (creates Dense_0)."""
    if temb is None:
        return h
    bias = nn.Dense(out_ch, kernel_init=default_init(), dtype=dtype)(act(temb))
    return cpu.add_example_bias(h, bias)


class ResnetBlockDDPMpp(nn.Module):
    """DDPM residual block with skip rescaling (DDPM++): x [B,H,W,C], temb [B,E] -> [B,H,W,out_ch]."""

    act: Callable[[Array], Array]
    out_ch: Optional[int] = None
    conv_shortcut: bool = False
    dropout: float = 0.1
    skip_rescale: bool = False
    init_scale: float = 0.0
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
        c = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else c
        h = self.act(group_norm(c, self.dtype)(x))
        h = ddpm_conv3x3(h, out_ch, dtype=self.dtype)
        h = _add_time_bias(h, temb, self.act, out_ch, self.dtype)
        h = self.act(group_norm(out_ch, self.dtype)(h))
        h = cpu.Dropout(self.dropout)(h, deterministic=not train)
        h = ddpm_conv3x3(h, out_ch, init_scale=self.init_scale, dtype=self.dtype)
        if c != out_ch:
            x = ddpm_conv3x3(x, out_ch, dtype=self.dtype) if self.conv_shortcut else NIN(out_ch, dtype=self.dtype)(x)
        return skip_sum(x, h, self.skip_rescale)


class ResnetBlockBigGANpp(nn.Module):
    """BigGAN residual block, optionally 2x up/down (NCSN++): x [B,H,W,C], temb [B,E] -> [B,H',W',out_ch]."""

    act: Callable[[Array], Array]
    up: bool = False
    down: bool = False
    out_ch: Optional[int] = None
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Optional[Dtype] = None

    def _resample(self, x: Array) -> Array:
        """Apply this block's 2x up or down sampling (FIR or naive) to x [B,H,W,C]."""
        if self.up:
            return updown.upsample_2d(x, self.fir_kernel, factor=2) if self.fir else updown.naive_upsample_2d(x)
        if self.down:
            return updown.downsample_2d(x, self.fir_kernel, factor=2) if self.fir else updown.naive_downsample_2d(x)
        return x

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
        c = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else c
        h = self.act(group_norm(c, self.dtype)(x))
        h, x = self._resample(h), self._resample(x)
        h = ddpm_conv3x3(h, out_ch, dtype=self.dtype)
        h = _add_time_bias(h, temb, self.act, out_ch, self.dtype)
        h = self.act(group_norm(out_ch, self.dtype)(h))
        h = cpu.Dropout(self.dropout)(h, deterministic=not train)
        h = ddpm_conv3x3(h, out_ch, init_scale=self.init_scale, dtype=self.dtype)
        if c != out_ch or self.up or self.down:
            x = ddpm_conv1x1(x, out_ch, dtype=self.dtype)
        return skip_sum(x, h, self.skip_rescale)

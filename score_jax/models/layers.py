"""DDPM-family layers of the official score_sde `models/layers.py`, with the same flax module names.

Parameter paths must match the official checkpoints, so every submodule is created in the official
order with the official class name (flax numbers submodules per class in creation order). The conv
helpers are functions, as in the official code: called inside a compact method, they add a `Conv_<n>`
to the caller's scope rather than a scope of their own.

`dtype` (default None: computation in the inputs' and parameters' dtype, i.e. float32 as officially)
sets the compute dtype of convolutions and dense layers; parameters stay float32.

References:
  Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (diffusion_tf/nn.py).
  Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021 (score_sde/models/layers.py).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from score_jax.errors import InvalidInputError
from score_jax.models import cpu

Array = jax.Array
Dtype = Any
Initializer = Callable[..., Array]
Normalizer = Callable[[], nn.Module]  # a zero-argument module factory, e.g. partial(GroupNorm, ...)

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "elu": nn.elu,
    "relu": nn.relu,
    "lrelu": functools.partial(nn.leaky_relu, negative_slope=0.2),
    "swish": nn.swish,
}


def get_act(name: str) -> Callable[[Array], Array]:
    """Activation function by its official config name (elu, relu, lrelu, swish; case-insensitive)."""
    act = ACTIVATIONS.get(name.lower())
    if act is None:
        raise InvalidInputError(f"nonlinearity: unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.")
    return act


def default_init(scale: float = 1.0) -> Initializer:
    """DDPM initialiser: variance scaling, fan_avg, uniform; scale 0 becomes 1e-10 as officially."""
    # A zero scale would make the layer's output identically zero and its gradient w.r.t. the input
    # vanish; the official code keeps a tiny scale so that parameters still differ from zero.
    scale = 1e-10 if scale == 0 else scale
    return jax.nn.initializers.variance_scaling(scale, "fan_avg", "uniform")


def ddpm_conv1x1(x: Array, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0, dtype: Optional[Dtype] = None) -> Array:
    """1x1 convolution with DDPM init, created in the caller's scope: x [B,H,W,C] -> [B,H',W',out]."""
    return cpu.Conv(out_planes, kernel_size=(1, 1), strides=(stride, stride), padding="SAME",
                use_bias=bias, kernel_dilation=(dilation, dilation), kernel_init=default_init(init_scale),
                bias_init=jax.nn.initializers.zeros, dtype=dtype)(x)


def ddpm_conv3x3(x: Array, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0, dtype: Optional[Dtype] = None) -> Array:
    """3x3 convolution with DDPM init, created in the caller's scope: x [B,H,W,C] -> [B,H',W',out]."""
    return cpu.Conv(out_planes, kernel_size=(3, 3), strides=(stride, stride), padding="SAME",
                use_bias=bias, kernel_dilation=(dilation, dilation), kernel_init=default_init(init_scale),
                bias_init=jax.nn.initializers.zeros, dtype=dtype)(x)


def get_timestep_embedding(timesteps: Array, embedding_dim: int, max_positions: int = 10000) -> Array:
    """Sinusoidal (transformer) embedding of timesteps [B] -> [B, embedding_dim], float32."""
    if timesteps.ndim != 1:
        raise InvalidInputError(f"timesteps: expected a 1-D array [B], got shape {timesteps.shape}.")
    half_dim = embedding_dim // 2
    emb = math.log(max_positions) / (half_dim - 1)
    emb = jnp.exp(jnp.arange(half_dim, dtype=jnp.float32) * -emb)
    emb = timesteps[:, None] * emb[None, :]
    emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=1)
    if embedding_dim % 2 == 1:
        emb = jnp.pad(emb, [[0, 0], [0, 1]])
    return emb


class NIN(nn.Module):
    """Network-in-network (per-pixel dense) layer, params W [C, num_units], b: x [..., C] -> [..., num_units]."""

    num_units: int
    init_scale: float = 0.1
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        in_dim = int(x.shape[-1])
        w = self.param("W", default_init(scale=self.init_scale), (in_dim, self.num_units))
        b = self.param("b", jax.nn.initializers.zeros, (self.num_units,))
        dtype = self.dtype or jnp.result_type(x, w)
        y = jnp.tensordot(x.astype(dtype), w.astype(dtype), axes=1)
        return cpu.add_bias(y, b.astype(dtype))


def spatial_attention(q: Array, k: Array, v: Array) -> Array:
    """Softmax attention over all H*W positions: q, k, v [B,H,W,C] -> [B,H,W,C]."""
    b, h, w, c = q.shape
    logits = jnp.einsum("bhwc,bHWc->bhwHW", q, k) * (int(c) ** (-0.5))
    # Softmax in float32 at least: in bfloat16 its normaliser loses most of its digits.
    logits = jnp.reshape(logits, (b, h, w, h * w)).astype(jnp.promote_types(q.dtype, jnp.float32))
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    weights = jnp.reshape(weights, (b, h, w, h, w))
    return jnp.einsum("bhwHW,bHWc->bhwc", weights, v)


class AttnBlock(nn.Module):
    """DDPM channel-wise self-attention block with residual: x [B,H,W,C] -> [B,H,W,C]."""

    normalize: Normalizer
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = x.shape[-1]
        h = self.normalize()(x)
        q = NIN(c, dtype=self.dtype)(h)
        k = NIN(c, dtype=self.dtype)(h)
        v = NIN(c, dtype=self.dtype)(h)
        h = spatial_attention(q, k, v)
        h = NIN(c, init_scale=0.0, dtype=self.dtype)(h)
        return x + h


def nearest_upsample_2x(x: Array) -> Array:
    """Nearest-neighbour 2x upsampling: x [B,H,W,C] -> [B,2H,2W,C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Upsample(nn.Module):
    """DDPM 2x nearest upsampling, optionally followed by a 3x3 conv: x [B,H,W,C] -> [B,2H,2W,C]."""

    with_conv: bool = False
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nearest_upsample_2x(x)
        if self.with_conv:
            h = ddpm_conv3x3(h, x.shape[-1], dtype=self.dtype)
        return h


class Downsample(nn.Module):
    """DDPM 2x downsampling, strided 3x3 conv or 2x2 average pool: x [B,H,W,C] -> [B,H/2,W/2,C]."""

    with_conv: bool = False
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.with_conv:
            return ddpm_conv3x3(x, x.shape[-1], stride=2, dtype=self.dtype)
        return nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="SAME")


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block with time-embedding bias: x [B,H,W,C], temb [B,E] -> [B,H,W,out_ch]."""

    act: Callable[[Array], Array]
    normalize: Normalizer
    out_ch: Optional[int] = None
    conv_shortcut: bool = False
    dropout: float = 0.5
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array, temb: Optional[Array] = None, train: bool = True) -> Array:
        c = x.shape[-1]
        out_ch = self.out_ch if self.out_ch else c
        h = self.act(self.normalize()(x))
        h = ddpm_conv3x3(h, out_ch, dtype=self.dtype)
        if temb is not None:
            bias = nn.Dense(out_ch, kernel_init=default_init(), dtype=self.dtype)(self.act(temb))
            h = cpu.add_example_bias(h, bias)
        h = self.act(self.normalize()(h))
        h = cpu.Dropout(self.dropout)(h, deterministic=not train)
        h = ddpm_conv3x3(h, out_ch, init_scale=0.0, dtype=self.dtype)
        if c != out_ch:
            if self.conv_shortcut:
                x = ddpm_conv3x3(x, out_ch, dtype=self.dtype)
            else:
                x = NIN(out_ch, dtype=self.dtype)(x)
        return cpu.grad_barrier(x + h)

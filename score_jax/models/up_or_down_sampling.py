"""FIR up/down sampling (StyleGAN2 `upfirdn2d`) and the fused up/down convolution, in pure JAX, NHWC.

Every operation is an XLA convolution (zero insertion through `lhs_dilation`, cropping through
negative padding, decimation through `window_strides`), so no custom CUDA kernel is needed and all
derivatives come from XLA. The maths and padding conventions are those of the official score_sde
`models/up_or_down_sampling.py` (itself ported from StyleGAN2), so outputs agree with it.

References:
  Karras et al., "Analyzing and Improving the Image Quality of StyleGAN", CVPR 2020 (upfirdn2d).
  Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax.models import cpu
from score_jax.models.layers import default_init
from score_jax.errors import InvalidInputError

Array = jax.Array
Dtype = Any

_NHWC = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: Sequence[float] | np.ndarray) -> np.ndarray:
    """FIR kernel [n] (separable) or [n, n] -> normalised 2-D float32 kernel [n, n] summing to 1."""
    k = np.asarray(k, dtype=np.float32)
    if k.ndim == 1:
        k = np.outer(k, k)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise InvalidInputError(f"fir_kernel: expected a 1-D or square 2-D filter, got shape {k.shape}.")
    return k / np.sum(k)


def upfirdn_2d(x: Array, k: np.ndarray, up: int = 1, down: int = 1, pad0: int = 0, pad1: int = 0) -> Array:
    """Zero-upsample by `up`, pad (pad0, pad1), convolve with k, keep every `down`-th pixel: x [B,H,W,C].

    Output size per spatial axis: (H * up + pad0 + pad1 - n) // down + 1 for a kernel k [n, n]; a
    negative pad crops. The same convention as StyleGAN2's `upfirdn_2d`.
    """
    if up < 1 or down < 1:
        raise InvalidInputError(f"up/down: expected integer factors >= 1, got up={up}, down={down}.")
    channels = x.shape[-1]
    # True convolution = correlation with the flipped filter; one depthwise filter per channel.
    w = jnp.asarray(k[::-1, ::-1], dtype=x.dtype)
    w = jnp.tile(w[:, :, None, None], (1, 1, 1, channels))
    # lhs_dilation puts up-1 zeros between pixels; StyleGAN2 also puts them after the last pixel.
    padding = [(pad0, pad1 + up - 1)] * 2
    return jax.lax.conv_general_dilated(x, w, window_strides=(down, down), padding=padding,
                                        lhs_dilation=(up, up), dimension_numbers=_NHWC,
                                        feature_group_count=channels)


def upsample_2d(x: Array, k: Optional[Sequence[float]] = None, factor: int = 2, gain: float = 1.0) -> Array:
    """FIR upsampling: x [B,H,W,C] -> [B,factor H,factor W,C]; default k is nearest neighbour."""
    k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
    p = k.shape[0] - factor
    return upfirdn_2d(x, k, up=factor, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2)


def downsample_2d(x: Array, k: Optional[Sequence[float]] = None, factor: int = 2, gain: float = 1.0) -> Array:
    """FIR downsampling: x [B,H,W,C] -> [B,H/factor,W/factor,C]; default k is average pooling."""
    k = setup_kernel([1] * factor if k is None else k) * gain
    p = k.shape[0] - factor
    return upfirdn_2d(x, k, down=factor, pad0=(p + 1) // 2, pad1=p // 2)


def upsample_conv_2d(x: Array, w: Array, k: Optional[Sequence[float]] = None, factor: int = 2,
                     gain: float = 1.0) -> Array:
    """Fused FIR upsampling and convolution: x [B,H,W,C], w [n,n,C,O] -> [B,factor H,factor W,O]."""
    conv = w.shape[0]
    if w.ndim != 4 or w.shape[1] != conv:
        raise InvalidInputError(f"w: expected a square HWIO kernel, got shape {w.shape}.")
    k = setup_kernel([1] * factor if k is None else k) * (gain * factor ** 2)
    p = (k.shape[0] - factor) - (conv - 1)
    # StyleGAN2's stride-`factor` transposed convolution with its kernel pre-flipped and transposed
    # is a plain correlation with w over the zero-upsampled input, padded conv-1 before and
    # factor-1 + max(conv-factor, 0) after.
    pad_after = factor - 1 + max(conv - factor, 0)
    x = jax.lax.conv_general_dilated(x, w.astype(x.dtype), window_strides=(1, 1),
                                     padding=[(conv - 1, pad_after)] * 2, lhs_dilation=(factor, factor),
                                     dimension_numbers=_NHWC)
    return upfirdn_2d(x, k, pad0=(p + 1) // 2 + factor - 1, pad1=p // 2 + 1)


def conv_downsample_2d(x: Array, w: Array, k: Optional[Sequence[float]] = None, factor: int = 2,
                       gain: float = 1.0) -> Array:
    """Fused FIR downsampling and convolution: x [B,H,W,C], w [n,n,C,O] -> [B,H/factor,W/factor,O]."""
    conv = w.shape[0]
    if w.ndim != 4 or w.shape[1] != conv:
        raise InvalidInputError(f"w: expected a square HWIO kernel, got shape {w.shape}.")
    k = setup_kernel([1] * factor if k is None else k) * gain
    p = (k.shape[0] - factor) + (conv - 1)
    x = upfirdn_2d(x, k, pad0=(p + 1) // 2, pad1=p // 2)
    return jax.lax.conv_general_dilated(x, w.astype(x.dtype), window_strides=(factor, factor),
                                        padding="VALID", dimension_numbers=_NHWC)


def naive_upsample_2d(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling: x [B,H,W,C] -> [B,factor H,factor W,C]."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def naive_downsample_2d(x: Array, factor: int = 2) -> Array:
    """Average pooling over factor x factor blocks: x [B,H,W,C] -> [B,H/factor,W/factor,C]."""
    b, h, w, c = x.shape
    x = jnp.reshape(x, (b, h // factor, factor, w // factor, factor, c))
    return jnp.mean(x, axis=(2, 4))


class Conv2d(nn.Module):
    """Convolution with optional fused FIR up/down sampling (StyleGAN2), params `weight` [k,k,C,fmaps], `bias`."""

    fmaps: int
    kernel: int
    up: bool = False
    down: bool = False
    resample_kernel: Sequence[int] = (1, 3, 3, 1)
    use_bias: bool = True
    weight_var: str = "weight"
    kernel_init: Optional[Callable[..., Array]] = None
    dtype: Optional[Dtype] = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        if self.up and self.down:
            raise InvalidInputError("Conv2d: up and down are exclusive; set at most one of them.")
        if self.kernel < 1 or self.kernel % 2 != 1:
            raise InvalidInputError(f"kernel: expected an odd size >= 1, got {self.kernel}.")
        kernel_init = self.kernel_init if self.kernel_init is not None else default_init()
        w = self.param(self.weight_var, kernel_init, (self.kernel, self.kernel, x.shape[-1], self.fmaps))
        dtype = self.dtype or jnp.result_type(x, w)
        x, w = x.astype(dtype), w.astype(dtype)
        if self.up:
            x = upsample_conv_2d(x, w, k=self.resample_kernel)
        elif self.down:
            x = conv_downsample_2d(x, w, k=self.resample_kernel)
        else:
            x = jax.lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME",
                                             dimension_numbers=_NHWC)
        if self.use_bias:
            b = self.param("bias", jax.nn.initializers.zeros, (x.shape[-1],))
            x = cpu.add_bias(x, b.astype(dtype))
        return x

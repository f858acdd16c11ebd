"""RefineNet blocks of NCSN / NCSNv2 (official score_sde `models/layers.py`), same flax module names.

Parameter paths must match the official checkpoints, so each submodule is created in the official
order under the official class name (flax numbers submodules per class in creation order). The conv
helpers are functions, as officially: inside a compact method they add a `Conv_<n>` to the caller.
The unconditional (NCSNv2) and noise-conditional (NCSNv1, `Cond*`) blocks share one implementation;
a conditional block passes its normaliser and the integer noise labels `y [B]`.

Also holds the SMLD noise-level table (`get_sigmas`) and the output division by sigma shared by
NCSN, NCSNv2 and DDPM with `scale_by_sigma`.

References:
  Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution", NeurIPS 2019.
  Song & Ermon, "Improved Techniques for Training Score-Based Generative Models", NeurIPS 2020.
  Lin et al., "RefineNet: Multi-Path Refinement Networks", CVPR 2017.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from score_jax.errors import InvalidInputError

Array = jax.Array
Activation = Callable[[Array], Array]
NormFactory = Callable[[], nn.Module]  # zero-argument module factory

INTERPOLATIONS = {"bilinear": "bilinear", "nearest_neighbor": "nearest"}  # config name -> jax.image
RESAMPLES = (None, "down")


def _pytorch_init(init_scale: float, kernel_shape: tuple[int, ...]) -> tuple[Callable, Callable]:
    """Kernel and bias initialisers that mimic PyTorch's conv default, U(+-1/sqrt(fan_in)) for both.

    The bias is the first output row of a fresh kernel draw with the bias key, exactly as officially,
    so the same PRNG key reproduces the official bias.
    """
    init_scale = 1e-10 if init_scale == 0 else init_scale
    kernel_init = jax.nn.initializers.variance_scaling(init_scale / 3, "fan_in", "uniform")

    def bias_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
        return kernel_init(key, kernel_shape, dtype)[0, 0, 0, :]

    return kernel_init, bias_init


def _ncsn_conv(x: Array, out_planes: int, size: int, stride: int, bias: bool, dilation: int,
               init_scale: float) -> Array:
    """size x size convolution with PyTorch-style init, created in the caller's scope."""
    kernel_init, bias_init = _pytorch_init(init_scale, (size, size, x.shape[-1], out_planes))
    return nn.Conv(out_planes, kernel_size=(size, size), strides=(stride, stride), padding="SAME",
                   use_bias=bias, kernel_dilation=(dilation, dilation), kernel_init=kernel_init,
                   bias_init=bias_init)(x)


def ncsn_conv1x1(x: Array, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0) -> Array:
    """1x1 convolution with NCSN (PyTorch) init in the caller's scope: x [B,H,W,C] -> [B,H',W',out]."""
    return _ncsn_conv(x, out_planes, 1, stride, bias, dilation, init_scale)


def ncsn_conv3x3(x: Array, out_planes: int, stride: int = 1, bias: bool = True, dilation: int = 1,
                 init_scale: float = 1.0) -> Array:
    """3x3 convolution with NCSN (PyTorch) init in the caller's scope: x [B,H,W,C] -> [B,H',W',out]."""
    return _ncsn_conv(x, out_planes, 3, stride, bias, dilation, init_scale)


def _norm(normalizer: Optional[NormFactory], x: Array, y: Optional[Array]) -> Array:
    """Apply a fresh normaliser module, conditioned on labels y [B] when given; identity if None."""
    if normalizer is None:
        return x
    return normalizer()(x) if y is None else normalizer()(x, y)


def interpolation_method(interpolation: str) -> str:
    """jax.image.resize method for an official interpolation name (bilinear, nearest_neighbor).

    Raises:
      ValueError: unknown name.
    """
    if interpolation not in INTERPOLATIONS:
        raise InvalidInputError(f"interpolation: unknown mode {interpolation!r}; expected one of "
                                f"{sorted(INTERPOLATIONS)}.")
    return INTERPOLATIONS[interpolation]


# ----------------------------------------------------------------------------------------------
# Chained residual pooling, residual conv units, multi-resolution fusion: the RefineNet parts.
# ----------------------------------------------------------------------------------------------

def _crp(x: Array, features: int, n_stages: int, act: Activation, pool: Callable,
         normalizer: Optional[NormFactory] = None, y: Optional[Array] = None) -> Array:
    """Chained residual pooling: each stage pools (5x5, stride 1) and convolves the previous path."""
    x = act(x)
    path = x
    for _ in range(n_stages):
        path = _norm(normalizer, path, y)
        path = pool(path, window_shape=(5, 5), strides=(1, 1), padding="SAME")
        path = ncsn_conv3x3(path, features, stride=1, bias=False)
        x = path + x
    return x


class CRPBlock(nn.Module):
    """NCSNv2 chained residual pooling (max pool): x [B,H,W,features] -> same."""

    features: int
    n_stages: int
    act: Activation = nn.relu

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _crp(x, self.features, self.n_stages, self.act, nn.max_pool)


class CondCRPBlock(nn.Module):
    """NCSNv1 noise-conditional chained residual pooling (avg pool): x, y [B] -> same shape as x."""

    features: int
    n_stages: int
    normalizer: NormFactory
    act: Activation = nn.relu

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        # flax avg_pool with SAME padding counts the zero padding, as the official code does.
        return _crp(x, self.features, self.n_stages, self.act, nn.avg_pool, self.normalizer, y)


def _rcu(x: Array, features: int, n_blocks: int, n_stages: int, act: Activation,
         normalizer: Optional[NormFactory] = None, y: Optional[Array] = None) -> Array:
    """Residual conv units: n_blocks residual blocks of n_stages (norm,) act, 3x3 conv (no bias)."""
    for _ in range(n_blocks):
        residual = x
        for _ in range(n_stages):
            x = _norm(normalizer, x, y)
            x = act(x)
            x = ncsn_conv3x3(x, features, stride=1, bias=False)
        x = x + residual
    return x


class RCUBlock(nn.Module):
    """NCSNv2 residual conv unit: x [B,H,W,features] -> same."""

    features: int
    n_blocks: int
    n_stages: int
    act: Activation = nn.relu

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _rcu(x, self.features, self.n_blocks, self.n_stages, self.act)


class CondRCUBlock(nn.Module):
    """NCSNv1 noise-conditional residual conv unit: x [B,H,W,features], y [B] -> same shape as x."""

    features: int
    n_blocks: int
    n_stages: int
    normalizer: NormFactory
    act: Activation = nn.relu

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        return _rcu(x, self.features, self.n_blocks, self.n_stages, self.act, self.normalizer, y)


def _msf(xs: Sequence[Array], shape: Sequence[int], features: int, interpolation: str,
         normalizer: Optional[NormFactory] = None, y: Optional[Array] = None) -> Array:
    """Multi-resolution fusion: sum of per-input (norm,) 3x3 conv resized to `shape` [H, W]."""
    method = interpolation_method(interpolation)
    sums = jnp.zeros((xs[0].shape[0], *shape, features))
    for x in xs:
        h = _norm(normalizer, x, y)
        h = ncsn_conv3x3(h, features, stride=1, bias=True)
        h = jax.image.resize(h, (h.shape[0], *shape, h.shape[-1]), method)
        sums = sums + h
    return sums


class MSFBlock(nn.Module):
    """NCSNv2 multi-resolution fusion: list of [B,Hi,Wi,Ci] -> [B, *shape, features]."""

    shape: Sequence[int]
    features: int
    interpolation: str = "bilinear"

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> Array:
        return _msf(xs, self.shape, self.features, self.interpolation)


class CondMSFBlock(nn.Module):
    """NCSNv1 noise-conditional fusion: list of [B,Hi,Wi,Ci], y [B] -> [B, *shape, features]."""

    shape: Sequence[int]
    features: int
    normalizer: NormFactory
    interpolation: str = "bilinear"

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Array) -> Array:
        return _msf(xs, self.shape, self.features, self.interpolation, self.normalizer, y)


def _refine(xs: Sequence[Array], y: Optional[Array], *, output_shape: Sequence[int], features: int,
            act: Activation, interpolation: str, start: bool, end: bool,
            normalizer: Optional[NormFactory]) -> Array:
    """RefineNet block: RCU per input, fuse (unless start), CRP, output RCU (3 units if end, else 1).

    Creates the conditional block classes when y is given, the NCSNv2 ones otherwise.
    """
    cond = y is not None
    extra = {"normalizer": normalizer} if cond else {}
    args = (y,) if cond else ()
    rcu, msf, crp = (CondRCUBlock, CondMSFBlock, CondCRPBlock) if cond else (RCUBlock, MSFBlock, CRPBlock)
    hs = [rcu(features=x.shape[-1], n_blocks=2, n_stages=2, act=act, **extra)(x, *args) for x in xs]
    if start:
        h = hs[0]
    else:
        h = msf(shape=tuple(output_shape), features=features, interpolation=interpolation,
                **extra)(hs, *args)
    h = crp(features=features, n_stages=2, act=act, **extra)(h, *args)
    return rcu(features=features, n_blocks=3 if end else 1, n_stages=2, act=act, **extra)(h, *args)


class RefineBlock(nn.Module):
    """NCSNv2 RefineNet block: list of [B,Hi,Wi,Ci] -> [B, *output_shape, features]."""

    output_shape: Sequence[int]
    features: int
    act: Activation = nn.relu
    interpolation: str = "bilinear"
    start: bool = False
    end: bool = False

    @nn.compact
    def __call__(self, xs: Sequence[Array]) -> Array:
        return _refine(xs, None, output_shape=self.output_shape, features=self.features, act=self.act,
                       interpolation=self.interpolation, start=self.start, end=self.end,
                       normalizer=None)


class CondRefineBlock(nn.Module):
    """NCSNv1 noise-conditional RefineNet block: list of [B,Hi,Wi,Ci], y [B] -> [B,*output_shape,features]."""

    output_shape: Sequence[int]
    features: int
    normalizer: NormFactory
    act: Activation = nn.relu
    interpolation: str = "bilinear"
    start: bool = False
    end: bool = False

    @nn.compact
    def __call__(self, xs: Sequence[Array], y: Array) -> Array:
        return _refine(xs, y, output_shape=self.output_shape, features=self.features, act=self.act,
                       interpolation=self.interpolation, start=self.start, end=self.end,
                       normalizer=self.normalizer)


# ----------------------------------------------------------------------------------------------
# ResNet backbone.
# ----------------------------------------------------------------------------------------------

def mean_pool_2x(x: Array) -> Array:
    """2x2 mean pooling by strided slices, as officially (odd sizes drop the last row/column)."""
    return (x[:, ::2, ::2, :] + x[:, 1::2, ::2, :] + x[:, ::2, 1::2, :] + x[:, 1::2, 1::2, :]) / 4.0


class ConvMeanPool(nn.Module):
    """Conv (flax default init) then 2x2 mean pool: x [B,H,W,C] -> [B,H/2,W/2,output_dim]."""

    output_dim: int
    kernel_size: int = 3
    biases: bool = True

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        k = self.kernel_size
        h = nn.Conv(self.output_dim, kernel_size=(k, k), strides=(1, 1), padding="SAME",
                    use_bias=self.biases)(inputs)
        return mean_pool_2x(h)


def _residual(x: Array, y: Optional[Array], *, output_dim: int, normalizer: NormFactory,
              resample: Optional[str], act: Activation, dilation: int) -> Array:
    """Pre-activation residual block of the NCSN backbone: x [B,H,W,C] -> [B,H',W',output_dim].

    'down' halves H and W with ConvMeanPool when dilation is 1; a dilated 'down' block keeps the
    size and widens the receptive field instead (official NCSNv2 behaviour). Module creation order
    (shortcut before or after the main convs) follows the official code branch by branch.
    """
    if resample not in RESAMPLES:
        raise InvalidInputError(f"resample: expected one of {list(RESAMPLES)}, got {resample!r}.")
    h = act(_norm(normalizer, x, y))
    if resample == "down":
        h = ncsn_conv3x3(h, h.shape[-1], dilation=dilation)
        h = act(_norm(normalizer, h, y))
        if dilation > 1:
            h = ncsn_conv3x3(h, output_dim, dilation=dilation)
            shortcut = ncsn_conv3x3(x, output_dim, dilation=dilation)
        else:
            h = ConvMeanPool(output_dim=output_dim)(h)
            shortcut = ConvMeanPool(output_dim=output_dim, kernel_size=1)(x)
        return h + shortcut
    if output_dim == x.shape[-1]:
        shortcut = x
    elif dilation > 1:
        shortcut = ncsn_conv3x3(x, output_dim, dilation=dilation)
    else:
        shortcut = ncsn_conv1x1(x, output_dim)
    h = ncsn_conv3x3(h, output_dim, dilation=dilation)
    h = act(_norm(normalizer, h, y))
    h = ncsn_conv3x3(h, output_dim, dilation=dilation)
    return h + shortcut


class ResidualBlock(nn.Module):
    """NCSNv2 backbone residual block: x [B,H,W,C] -> [B,H',W',output_dim] (see `resample`)."""

    output_dim: int
    normalization: NormFactory
    resample: Optional[str] = None
    act: Activation = nn.elu
    dilation: int = 1

    @nn.compact
    def __call__(self, x: Array) -> Array:
        return _residual(x, None, output_dim=self.output_dim, normalizer=self.normalization,
                         resample=self.resample, act=self.act, dilation=self.dilation)


class ConditionalResidualBlock(nn.Module):
    """NCSNv1 noise-conditional residual block: x [B,H,W,C], y [B] -> [B,H',W',output_dim].

    The official JAX block calls `self.normalization(h, y)` (constructing, not applying, a layer)
    on its 'down' path, which cannot run; this block applies the layer there, as the NCSN paper and
    the PyTorch twin do, and names it as that call would be named.
    """

    output_dim: int
    normalization: NormFactory
    resample: Optional[str] = None
    act: Activation = nn.elu
    dilation: int = 1

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        return _residual(x, y, output_dim=self.output_dim, normalizer=self.normalization,
                         resample=self.resample, act=self.act, dilation=self.dilation)


# ----------------------------------------------------------------------------------------------
# SMLD noise levels and the output division by sigma.
# ----------------------------------------------------------------------------------------------

def get_sigmas(sigma_min: float, sigma_max: float, num_scales: int) -> Array:
    """Descending geometric noise levels [num_scales]: sigmas[0] = sigma_max, sigmas[-1] = sigma_min."""
    # Same float32 formula as the official `models/utils.get_sigmas`, so table lookups agree bitwise.
    return jnp.exp(jnp.linspace(jnp.log(sigma_max), jnp.log(sigma_min), num_scales))


def divide_by_sigma(h: Array, labels: Array, sigmas: Array) -> Array:
    """h [B, ...] / sigmas[labels] per example; labels [B] are integer indices into sigmas.

    Raises:
      ValueError: labels are not integers (e.g. continuous-time sigmas or times).
    """
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise InvalidInputError(f"labels: scale_by_sigma needs integer noise-level indices [B] into the "
                                f"descending sigma table, got dtype {labels.dtype}; use the discrete SMLD "
                                f"labels or set scale_by_sigma=False.")
    used = sigmas[labels].reshape((h.shape[0],) + (1,) * (h.ndim - 1))
    return h / used.astype(h.dtype)

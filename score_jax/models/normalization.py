"""Normalisation layers of NCSN / NCSNv2 (official score_sde `models/normalization.py`), same flax names.

All layers act on NHWC images and normalise over the spatial axes (1, 2) per example and channel, with
the official epsilon 1e-5 and population variance. Parameters have shape [1, 1, 1, C] as officially,
so released checkpoints drop in unchanged.

References:
  Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution", NeurIPS 2019
  (InstanceNorm++ and its noise-conditional form, appendix A).
  Song & Ermon, "Improved Techniques for Training Score-Based Generative Models", NeurIPS 2020.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from score_jax.errors import InvalidInputError
from score_jax.models import cpu

Array = jax.Array
NormFactory = Callable[[], nn.Module]  # zero-argument module factory: norm()(x) or norm()(x, labels)

_EPS = 1e-5


def _scale_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> Array:
    """N(1, 0.02^2) initialiser of the official InstanceNorm++ scales."""
    return jax.nn.initializers.normal(0.02)(key, shape, dtype) + 1.0


def _instance_stats(x: Array) -> tuple[Array, Array]:
    """Per-example, per-channel spatial mean and variance: x [B,H,W,C] -> ([B,1,1,C], [B,1,1,C])."""
    return jnp.mean(x, axis=(1, 2), keepdims=True), jnp.var(x, axis=(1, 2), keepdims=True)


def _standardised_channel_means(x: Array) -> tuple[Array, Array]:
    """InstanceNorm++ pieces: (instance-normalised x [B,H,W,C], standardised channel means [B,1,1,C]).

    InstanceNorm alone forgets each channel's mean; InstanceNorm++ feeds the means back after
    standardising them across channels, so colour shifts survive normalisation.
    """
    mean, var = _instance_stats(x)
    m = jnp.mean(mean, axis=-1, keepdims=True)
    v = jnp.var(mean, axis=-1, keepdims=True)
    means_plus = (mean - m) / jnp.sqrt(v + _EPS)
    h = (x - mean) / jnp.sqrt(var + _EPS)
    return h, means_plus


class InstanceNorm2d(nn.Module):
    """Instance normalisation, params scale (ones) and bias (zeros) [1,1,1,C]: x [B,H,W,C] -> same."""

    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        mean, var = _instance_stats(x)
        h = (x - mean) / jnp.sqrt(var + _EPS)
        h = h * self.param("scale", jax.nn.initializers.ones, (1, 1, 1, x.shape[-1]))
        if self.use_bias:
            h = h + self.param("bias", jax.nn.initializers.zeros, (1, 1, 1, x.shape[-1]))
        return h


class VarianceNorm2d(nn.Module):
    """Variance normalisation (no centring), params scale ~N(1,.02) [, bias]: x [B,H,W,C] -> same."""

    use_bias: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        _, var = _instance_stats(x)
        h = x / jnp.sqrt(var + _EPS)
        h = h * self.param("scale", _scale_init, (1, 1, 1, x.shape[-1]))
        if self.use_bias:
            h = h + self.param("bias", jax.nn.initializers.zeros, (1, 1, 1, x.shape[-1]))
        return h


class InstanceNorm2dPlus(nn.Module):
    """InstanceNorm++: gamma * (IN(x) + alpha * standardised channel means) + beta; x [B,H,W,C] -> same.

    Params alpha, gamma ~ N(1, 0.02^2) and beta = 0, each [1, 1, 1, C].
    """

    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h, means_plus = _standardised_channel_means(x)
        c = x.shape[-1]
        h = h + means_plus * self.param("alpha", _scale_init, (1, 1, 1, c))
        h = h * self.param("gamma", _scale_init, (1, 1, 1, c))
        if self.use_bias:
            h = h + self.param("beta", jax.nn.initializers.zeros, (1, 1, 1, c))
        return h


class ConditionalInstanceNorm2dPlus(nn.Module):
    """Noise-conditional InstanceNorm++: x [B,H,W,C], integer labels y [B] -> [B,H,W,C].

    One `Embed` table [num_classes, 3C] (or [num_classes, 2C] without bias) holds, per noise level,
    gamma | alpha | beta in that column order; gamma and alpha start at N(1, 0.02^2), beta at 0.
    """

    num_classes: int = 10
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: Array, y: Array) -> Array:
        c = x.shape[-1]
        n_parts = 3 if self.use_bias else 2
        embed = nn.Embed(num_embeddings=self.num_classes, features=n_parts * c,
                         embedding_init=functools.partial(_embed_init, use_bias=self.use_bias))
        h, means_plus = _standardised_channel_means(x)
        parts = jnp.split(embed(y), n_parts, axis=-1)
        gamma, alpha = parts[0][:, None, None, :], parts[1][:, None, None, :]
        out = gamma * (h + means_plus * alpha)
        if self.use_bias:
            out = out + parts[2][:, None, None, :]
        return out


def _embed_init(key: Array, shape: tuple[int, ...], dtype: Any = jnp.float32, *,
                use_bias: bool) -> Array:
    """Embedding table [K, 3C] (gamma | alpha ~ N(1, .02^2), beta = 0) or [K, 2C] without bias.

    Drawn as the official code does (one normal draw of the scale columns with `key`), so the same
    key gives the same table.
    """
    if not use_bias:
        return _scale_init(key, shape, dtype)
    c = shape[1] // 3
    return jnp.concatenate([_scale_init(key, (shape[0], 2 * c), dtype),
                            jnp.zeros((shape[0], c), dtype)], axis=-1)


NORMALIZATIONS: dict[str, NormFactory] = {
    "InstanceNorm": InstanceNorm2d,
    "InstanceNorm++": InstanceNorm2dPlus,
    "VarianceNorm": VarianceNorm2d,
    "GroupNorm": cpu.GroupNorm,  # flax.linen.GroupNorm's defaults as officially: 32 groups, epsilon 1e-6
}
CONDITIONAL_NORMALIZATIONS = ("InstanceNorm++",)


def get_normalization(normalization: str, conditional: bool = False,
                      num_classes: Optional[int] = None) -> NormFactory:
    """Zero-argument factory of the normalisation layer named by the official config value.

    Args:
      normalization: 'InstanceNorm', 'InstanceNorm++', 'VarianceNorm' or 'GroupNorm'; conditional
        layers exist only for 'InstanceNorm++'.
      conditional: return the noise-conditional layer, called as norm()(x, labels).
      num_classes: number of noise levels (rows of the conditional embedding); required if conditional.

    Raises:
      ValueError: unknown name, conditional layer that does not exist, or missing num_classes.
    """
    if conditional:
        if normalization not in CONDITIONAL_NORMALIZATIONS:
            raise InvalidInputError(f"normalization: no conditional layer for {normalization!r}; expected one of "
                                    f"{list(CONDITIONAL_NORMALIZATIONS)}.")
        if num_classes is None or num_classes < 1:
            raise InvalidInputError(f"num_classes: a conditional normalisation needs a positive number of noise "
                                    f"levels, got {num_classes!r}.")
        return functools.partial(ConditionalInstanceNorm2dPlus, num_classes=num_classes)
    factory = NORMALIZATIONS.get(normalization)
    if factory is None:
        raise InvalidInputError(f"normalization: unknown layer {normalization!r}; expected one of "
                                f"{sorted(NORMALIZATIONS)}.")
    return factory

"""Noise-conditional classifiers p(y | x_t, t): the official WRN-28-10 and a small digits net.

Both take (x [B, H, W, C], noise [B], train) with noise = the marginal std(t) of the SDE they were
trained for, and embed log(noise) with Gaussian Fourier features. For VE this is sigma(t), the
official convention (its released `cifar10_wideresnet_noise_conditional` checkpoint reads with
`load_official_classifier`); for VP and sub-VP std(t) is just as strictly increasing in t, so
log std(t) is an invertible time code. `classifier_logits_fn` does this conversion, so samplers
see a plain fn(x, t).

The WRN mirrors the official `models/wideresnet_noise_conditional.py` (module and parameter
names, GroupNorm "bn" layers, identity + zero-padding skips, per-image standardisation).

References:
  Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016.
  Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021, Appendix I.
"""

from __future__ import annotations

import pathlib
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax.errors import InvalidInputError, MissingFileError
from score_jax.models import cpu
from score_jax.models.layerspp import GaussianFourierProjection

Array = jax.Array
# The official logit_fn standardises CIFAR-10 inputs in [0, 1] with these before the network.
CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)
_conv_init = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _dense_out_init(key, shape, dtype=jnp.float32):
    """U[-1/sqrt(out), 1/sqrt(out)] for the final layer (autoaugment WRN convention)."""
    return jax.random.uniform(key, shape, dtype, -1.0, 1.0) / np.sqrt(shape[1])


def _norm(x: Array, name: str) -> Array:
    return cpu.GroupNorm(num_groups=min(x.shape[-1] // 4, 32), epsilon=1e-5, name=name)(x)


def _skip_add(block_x: Array, orig_x: Array) -> Array:
    """block_x + orig_x, orig_x average-pooled and zero-padded in channels when they differ."""
    stride = orig_x.shape[-2] // block_x.shape[-2]
    if block_x.shape[-1] != orig_x.shape[-1]:
        orig_x = nn.avg_pool(orig_x, (stride, stride), (stride, stride))
        extra = block_x.shape[-1] - orig_x.shape[-1]
        orig_x = jnp.pad(orig_x, [(0, 0), (0, 0), (0, 0), (0, extra)])
    return block_x + orig_x


class WRNBlock(nn.Module):
    """Pre-activation wide residual block with an additive noise embedding."""

    channels: int
    strides: tuple[int, int] = (1, 1)
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, temb: Array) -> Array:
        if self.activate_before_residual:
            x = nn.relu(_norm(x, "init_bn"))
            block_x = x
        else:
            block_x = nn.relu(_norm(x, "init_bn"))
        block_x = nn.Conv(self.channels, (3, 3), self.strides, padding="SAME", use_bias=False,
                          kernel_init=_conv_init, name="conv1")(block_x)
        block_x = block_x + nn.Dense(self.channels, name="Dense_0")(nn.swish(temb))[:, None, None]
        block_x = nn.relu(_norm(block_x, "bn_2"))
        block_x = nn.Conv(self.channels, (3, 3), padding="SAME", use_bias=False,
                          kernel_init=_conv_init, name="conv2")(block_x)
        return _skip_add(block_x, x)


class WRNGroup(nn.Module):
    """blocks_per_group WRNBlocks, the first one strided."""

    blocks_per_group: int
    channels: int
    strides: tuple[int, int] = (1, 1)
    activate_before_residual: bool = False

    @nn.compact
    def __call__(self, x: Array, temb: Array) -> Array:
        for i in range(self.blocks_per_group):
            x = WRNBlock(self.channels, self.strides if i == 0 else (1, 1),
                         self.activate_before_residual and i == 0,
                         name=f"WideResnetBlock_{i}")(x, temb)
        return x


class WideResnetNoiseConditional(nn.Module):
    """WRN-(6 blocks_per_group + 4)-channel_multiplier: (x [B,H,W,C], noise [B]) -> logits [B, K]."""

    blocks_per_group: int = 4
    channel_multiplier: int = 10
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x: Array, noise: Array, train: bool = False) -> Array:
        del train  # GroupNorm and no dropout: train and eval are the same function
        size = np.prod(x.shape[1:])
        x = (x - jnp.mean(x, axis=(1, 2, 3), keepdims=True)) / jnp.maximum(
            jnp.std(x, axis=(1, 2, 3), keepdims=True), 1.0 / np.sqrt(size))
        temb = GaussianFourierProjection(embedding_size=128, scale=16.0,
                                         name="GaussianFourierProjection_0")(jnp.log(noise))
        temb = nn.Dense(512, name="Dense_0")(temb)
        temb = nn.Dense(512, name="Dense_1")(nn.swish(temb))
        x = nn.Conv(16, (3, 3), padding="SAME", use_bias=False, kernel_init=_conv_init,
                    name="init_conv")(x)
        for g, (width, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
            x = WRNGroup(self.blocks_per_group, width * self.channel_multiplier, (stride, stride),
                         activate_before_residual=(g == 0), name=f"WideResnetGroup_{g}")(x, temb)
        x = nn.relu(_norm(x, "pre-pool-bn"))
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_outputs, kernel_init=_dense_out_init, name="Dense_2")(x)


class DigitsNoiseConditional(nn.Module):
    """Small conv net for 8x8x1 digits: (x [B, 8, 8, 1], noise [B]) -> logits [B, num_outputs]."""

    width: int = 32
    embedding_size: int = 32
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x: Array, noise: Array, train: bool = False) -> Array:
        del train
        temb = GaussianFourierProjection(self.embedding_size, scale=1.0)(jnp.log(noise))
        temb = nn.swish(nn.Dense(2 * self.width)(temb))
        h = x
        for i, (width, stride) in enumerate(((self.width, 1), (2 * self.width, 2),
                                              (2 * self.width, 1))):
            h = nn.Conv(width, (3, 3), (stride, stride), padding="SAME")(h)
            h = h + nn.Dense(width)(temb)[:, None, None]
            h = nn.swish(_norm(h, f"norm_{i}"))
        h = jnp.mean(h, axis=(1, 2))
        return nn.Dense(self.num_outputs)(nn.swish(nn.Dense(2 * self.width)(h)))


CLASSIFIERS: dict[str, type[nn.Module]] = {
    "wideresnet_noise_conditional": WideResnetNoiseConditional,
    "digits_noise_conditional": DigitsNoiseConditional,
}


def noise_level(sde: Any, t: Array) -> Array:
    """The classifiers' conditioning for times t [B]: the marginal std(t) [B] of `sde`."""
    return sde.marginal_prob(jnp.zeros(t.shape + (1,), t.dtype), t)[1]


def _standardize(x: Array, mean: Optional[Array], std: Optional[Array]) -> Array:
    """(x - mean) / std per channel (last axis), or x itself without statistics."""
    if mean is None:
        return x
    shape = (1,) * (x.ndim - 1) + mean.shape
    return (x - mean.reshape(shape)) / std.reshape(shape)


class _Logits:
    """fn(x, t) of a classifier; hashable static part of the Partial built below."""

    def __init__(self, sde: Any, apply_fn: Any):
        self.sde, self.apply_fn = sde, apply_fn

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Logits) and (self.sde, self.apply_fn) == (other.sde,
                                                                             other.apply_fn)

    def __hash__(self) -> int:
        return hash((self.sde, self.apply_fn))

    def __call__(self, params, mean, std, x, t):
        return self.apply_fn({"params": params}, _standardize(x, mean, std),
                             noise_level(self.sde, t), train=False)


def classifier_logits_fn(sde: Any, apply_fn: Any, params: Any, *,
                         input_mean: Optional[tuple] = None,
                         input_std: Optional[tuple] = None) -> jax.tree_util.Partial:
    """logits_fn(x [B, ...], t [B]) -> [B, K] of a classifier here, as a pytree (params leaves).

    input_mean / input_std (per channel) standardise x first, as the official logit_fn does with
    CIFAR10_MEAN / CIFAR10_STD for its released classifier (which takes data in [0, 1]).
    """
    mean = None if input_mean is None else jnp.asarray(input_mean, jnp.float32)
    std = None if input_std is None else jnp.asarray(input_std, jnp.float32)
    return jax.tree_util.Partial(_Logits(sde, apply_fn), params, mean, std)


def load_official_classifier(path: str | pathlib.Path, params_template: Any) -> dict:
    """Parameters of the official noise-conditional classifier checkpoint (a bare msgpack params
    tree, as `models.utils.create_classifier` restores it), checked against params_template."""
    from score_jax import official_checkpoint, safe_files  # runtime services; only this loader

    path = pathlib.Path(path)
    if path.is_dir():
        path = official_checkpoint.latest_checkpoint_file(path)
    if not path.is_file():
        raise MissingFileError(f"classifier checkpoint {str(path)!r} does not exist.")
    tree = safe_files.read_msgpack(path, "classifier checkpoint")
    if not isinstance(tree, dict):
        raise InvalidInputError(f"{str(path)!r} does not hold a parameter tree.")
    official_checkpoint.check_tree_matches(tree, params_template, what=f"classifier {str(path)!r}")
    return jax.tree.map(np.asarray, tree)

"""The FID Inception network (the 2015-12-05 graph of TF-GAN and pytorch-fid) in Flax, NHWC.

The graph is torchvision's Inception-v3 with the FID changes pytorch-fid made to match the
TensorFlow graph: average pooling in blocks A, C and the first E block leaves padding out of the
count, the last E block (Mixed_7c) max-pools, and the classifier has 1008 logits. Module names
follow pytorch-fid's state dict (`Mixed_5b/branch1x1/conv`), so the weights convert by name.

Weights come only from a local file (`load_inception_params`, in `inception_weights.py`); nothing
is downloaded. Convolutions and matrix products run at `Precision.HIGHEST` so that GPUs and TPUs
do not silently drop to TF32/bfloat16 passes: FID is sensitive to feature errors of 1e-3.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax.errors import InvalidInputError

INCEPTION_SIZE = 299
POOL_DIM = 2048
NUM_LOGITS = 1008
_HIGHEST = jax.lax.Precision.HIGHEST


class InceptionOutput(NamedTuple):
    """Features of a batch: pool_3 [N, 2048] (FID/KID) and logits [N, 1008] (IS)."""

    pool_3: jax.Array
    logits: jax.Array


def _pad(kernel: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """'Same' padding of an odd kernel, as the torchvision layers spell it out."""
    return ((kernel[0] // 2, kernel[0] // 2), (kernel[1] // 2, kernel[1] // 2))


class BasicConv(nn.Module):
    """Convolution without bias, batch norm (running statistics, eps 1e-3), ReLU."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    stride: int = 1
    same: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        padding = _pad(self.kernel) if self.same else "VALID"
        x = nn.Conv(self.features, self.kernel, (self.stride, self.stride), padding=padding,
                    use_bias=False, precision=_HIGHEST, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average over the valid (unpadded) pixels only (count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x: jax.Array) -> jax.Array:
    """3x3 stride-1 max pooling with 1 pixel of padding (Mixed_7c of the FID graph)."""
    return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _max_pool_reduce(x: jax.Array) -> jax.Array:
    """3x3 stride-2 max pooling without padding (the grid reductions)."""
    return nn.max_pool(x, (3, 3), (2, 2))


class BlockA(nn.Module):
    """FIDInceptionA (Mixed_5b..5d): 1x1, 5x5, double 3x3 and pooled branches."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = BasicConv(64, name="branch1x1")(x)
        b = BasicConv(48, name="branch5x5_1")(x)
        b = BasicConv(64, (5, 5), same=True, name="branch5x5_2")(b)
        c = BasicConv(64, name="branch3x3dbl_1")(x)
        c = BasicConv(96, (3, 3), same=True, name="branch3x3dbl_2")(c)
        c = BasicConv(96, (3, 3), same=True, name="branch3x3dbl_3")(c)
        d = BasicConv(self.pool_features, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([a, b, c, d], axis=-1)


class BlockB(nn.Module):
    """InceptionB (Mixed_6a): grid reduction 35 -> 17."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = BasicConv(384, (3, 3), 2, name="branch3x3")(x)
        b = BasicConv(64, name="branch3x3dbl_1")(x)
        b = BasicConv(96, (3, 3), same=True, name="branch3x3dbl_2")(b)
        b = BasicConv(96, (3, 3), 2, name="branch3x3dbl_3")(b)
        return jnp.concatenate([a, b, _max_pool_reduce(x)], axis=-1)


class BlockC(nn.Module):
    """FIDInceptionC (Mixed_6b..6e): factorised 7x7 branches."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        a = BasicConv(192, name="branch1x1")(x)
        b = BasicConv(c7, name="branch7x7_1")(x)
        b = BasicConv(c7, (1, 7), same=True, name="branch7x7_2")(b)
        b = BasicConv(192, (7, 1), same=True, name="branch7x7_3")(b)
        c = BasicConv(c7, name="branch7x7dbl_1")(x)
        c = BasicConv(c7, (7, 1), same=True, name="branch7x7dbl_2")(c)
        c = BasicConv(c7, (1, 7), same=True, name="branch7x7dbl_3")(c)
        c = BasicConv(c7, (7, 1), same=True, name="branch7x7dbl_4")(c)
        c = BasicConv(192, (1, 7), same=True, name="branch7x7dbl_5")(c)
        d = BasicConv(192, name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([a, b, c, d], axis=-1)


class BlockD(nn.Module):
    """InceptionD (Mixed_7a): grid reduction 17 -> 8."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = BasicConv(192, name="branch3x3_1")(x)
        a = BasicConv(320, (3, 3), 2, name="branch3x3_2")(a)
        b = BasicConv(192, name="branch7x7x3_1")(x)
        b = BasicConv(192, (1, 7), same=True, name="branch7x7x3_2")(b)
        b = BasicConv(192, (7, 1), same=True, name="branch7x7x3_3")(b)
        b = BasicConv(192, (3, 3), 2, name="branch7x7x3_4")(b)
        return jnp.concatenate([a, b, _max_pool_reduce(x)], axis=-1)


class BlockE(nn.Module):
    """FIDInceptionE_1 / _2 (Mixed_7b / 7c): expanded filter banks; `pool` differs between them."""

    pool: Callable[[jax.Array], jax.Array]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = BasicConv(320, name="branch1x1")(x)
        b = BasicConv(384, name="branch3x3_1")(x)
        b = jnp.concatenate([BasicConv(384, (1, 3), same=True, name="branch3x3_2a")(b),
                             BasicConv(384, (3, 1), same=True, name="branch3x3_2b")(b)], axis=-1)
        c = BasicConv(448, name="branch3x3dbl_1")(x)
        c = BasicConv(384, (3, 3), same=True, name="branch3x3dbl_2")(c)
        c = jnp.concatenate([BasicConv(384, (1, 3), same=True, name="branch3x3dbl_3a")(c),
                             BasicConv(384, (3, 1), same=True, name="branch3x3dbl_3b")(c)],
                            axis=-1)
        d = BasicConv(192, name="branch_pool")(self.pool(x))
        return jnp.concatenate([a, b, c, d], axis=-1)


class FIDInception(nn.Module):
    """FID Inception-v3 on scaled images x [N, 299, 299, 3] in [-1, 1] -> InceptionOutput."""

    @nn.compact
    def __call__(self, x: jax.Array) -> InceptionOutput:
        x = BasicConv(32, (3, 3), 2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), same=True, name="Conv2d_2b_3x3")(x)
        x = _max_pool_reduce(x)
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_reduce(x)
        x = BlockA(32, name="Mixed_5b")(x)
        x = BlockA(64, name="Mixed_5c")(x)
        x = BlockA(64, name="Mixed_5d")(x)
        x = BlockB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = BlockC(c7, name=name)(x)
        x = BlockD(name="Mixed_7a")(x)
        x = BlockE(_avg_pool, name="Mixed_7b")(x)
        x = BlockE(_max_pool_same, name="Mixed_7c")(x)
        pool_3 = jnp.mean(x, axis=(1, 2))
        logits = nn.Dense(NUM_LOGITS, precision=_HIGHEST, name="fc")(pool_3)
        return InceptionOutput(pool_3, logits)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Interpolation matrix [out, in] of torch bilinear resizing (align_corners=False, no AA).

    Output pixel i samples the input at s = (i + 0.5) * in / out - 0.5, clamped below at 0
    (torch's `area_pixel_compute_source_index`), between floor(s) and the next pixel (clamped
    at the border). Unlike `jax.image.resize`, this never antialiases when shrinking.
    """
    scale = in_size / out_size
    src = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    weights = np.zeros((out_size, in_size), np.float64)
    rows = np.arange(out_size)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights.astype(np.float32)


def preprocess(images: jax.Array, size: int = INCEPTION_SIZE) -> jax.Array:
    """uint8 images [N, H, W, C in {1, 3}] in 0..255 -> float32 [N, size, size, 3] in [-1, 1].

    Bilinear resizing as pytorch-fid (torch `F.interpolate(align_corners=False)`) written as two
    interpolation matrices, then `2 x / 255 - 1`; grey images are repeated to three channels.
    """
    x = images.astype(jnp.float32) / 255.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    if x.shape[1:3] != (size, size):
        rows = jnp.asarray(bilinear_matrix(x.shape[1], size))
        cols = jnp.asarray(bilinear_matrix(x.shape[2], size))
        x = jnp.einsum("ih,nhwc,jw->nijc", rows, x, cols, precision=_HIGHEST)
    return 2.0 * x - 1.0


def check_images(images: np.ndarray | jax.Array, name: str = "images") -> None:
    """Raises InvalidInputError unless `images` is uint8 [N, H, W, 1 or 3] (H, W >= 1)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise InvalidInputError(
            f"{name}: got dtype {images.dtype} and shape {tuple(images.shape)}; expected uint8 "
            "images [N, H, W, C] in 0..255 with C = 1 or 3. Convert samples with "
            "np.clip(np.round(x * 255), 0, 255).astype(np.uint8) first.")


@jax.jit
def _apply(variables: dict, images: jax.Array) -> InceptionOutput:
    """The network on uint8 images; one module-level jit, so every caller shares its cache."""
    return FIDInception().apply(variables, preprocess(images))


def make_inception_fn(variables: dict) -> Callable[[jax.Array], InceptionOutput]:
    """Jitted features of uint8 images [N, H, W, C] -> InceptionOutput, for fixed `variables`.

    `variables` is {'params': ..., 'batch_stats': ...} as `load_inception_params` returns it.
    The variables are an argument of the compiled function, not constants folded into it.
    """
    def inception_fn(images: jax.Array) -> InceptionOutput:
        check_images(images)
        return _apply(variables, images)

    return inception_fn


def inception_features(inception_fn: Callable[[jax.Array], InceptionOutput], images: np.ndarray,
                       batch_size: int = 50) -> InceptionOutput:
    """Features of uint8 images [N, H, W, C] in batches -> numpy InceptionOutput ([N, 2048], ...).

    The last batch is padded to `batch_size` (and the padding dropped) so one shape compiles.
    """
    check_images(images)
    pools: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        n = len(batch)
        if n < batch_size:
            pad = np.zeros((batch_size - n,) + batch.shape[1:], np.uint8)
            batch = np.concatenate([batch, pad])
        out = inception_fn(batch)
        pools.append(np.asarray(out.pool_3)[:n])
        logits.append(np.asarray(out.logits)[:n])
    return InceptionOutput(_concat(pools, POOL_DIM), _concat(logits, NUM_LOGITS))


def _concat(parts: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """Concatenation that also gives [0, dim] for no parts."""
    return np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)

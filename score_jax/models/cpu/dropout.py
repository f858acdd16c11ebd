"""Dropout with flax's mask, bit for bit, drawn by a threefry hash that XLA:CPU fuses.

Why: `jax.random` lowers the threefry2x32 hash on the CPU as a rolled five-trip `while` loop (to
keep compile times down), so every dropout mask of a train step becomes a loop that writes its
whole [B,H,W,C] state to memory five times, plus the copies of the loop tuples around it. The
hash written out as twenty rounds of plain uint32 adds, rotations and xors is one elementwise
fusion. XLA:CPU would put that fusion into both consumers of the mask (the forward select and its
backward formula), so on the CPU the mask is stored once (barrier.materialize), one byte per
element.

The bits are those of `jax.random.bits` with partitionable threefry (JAX's default): the hash of
the key and each element's flat index, the two output words xor-ed. So the mask equals
`flax.linen.Dropout`'s for the same key, on every platform and under any sharding, and training
keeps its results; only the code XLA runs differs. Keys of other PRNG implementations, or JAX
configured with non-partitionable threefry, fall back to `jax.random.bernoulli`.

On GPU and TPU JAX already lowers threefry unrolled, so there, and everywhere with
SCORE_JAX_CPU_DROPOUT=0, the layer draws its mask with `jax.random.bernoulli` as flax's does.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax.models.cpu.barrier import materialize
from score_jax.models.cpu.switches import enabled

Array = jax.Array

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)  # Threefry's key-schedule constant


def _rotate_left(x: Array, d: int) -> Array:
    return (x << np.uint32(d)) | (x >> np.uint32(32 - d))


def threefry2x32(key1: Array, key2: Array, x1: Array, x2: Array) -> tuple[Array, Array]:
    """Threefry-2x32 (20 rounds) of the counter words x1, x2 [...] under the key words key1, key2 []."""
    ks = (key1, key2, key1 ^ key2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ _rotate_left(x2, r)
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _flat_index(shape: Sequence[int]) -> Array:
    """Each element's row-major flat index [*shape] uint32, as a sum of per-axis iotas (shardable)."""
    strides = np.cumprod((1,) + tuple(shape[:0:-1]))[::-1]
    index = jnp.zeros(shape, jnp.uint32)
    for axis, stride in enumerate(strides):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
    return index


def _is_typed(key: Array) -> bool:
    return jnp.issubdtype(key.dtype, jax.dtypes.prng_key)


def _key_words(key: Array) -> Array:
    """The uint32 words of a raw or typed key."""
    return jax.random.key_data(key) if _is_typed(key) else key


def _is_threefry(key: Array) -> bool:
    if _is_typed(key):
        return str(jax.random.key_impl(key)) == "threefry2x32"
    return key.shape == (2,) and key.dtype == jnp.uint32


def random_bits(key: Array, shape: Sequence[int]) -> Array:
    """`jax.random.bits(key, shape)` [*shape] uint32 for a threefry key, with the hash unrolled."""
    shape = tuple(shape)
    # A JAX without the option has only the partitionable scheme (the option's default since 0.5).
    partitionable = getattr(jax.config, "jax_threefry_partitionable", True)
    if not _is_threefry(key) or not partitionable or math.prod(shape) >= 2**32:
        return jax.random.bits(key, shape)
    words = _key_words(key)
    # The high word of each flat index is zero below 2**32 elements.
    bits1, bits2 = threefry2x32(words[0], words[1], jnp.zeros(shape, jnp.uint32), _flat_index(shape))
    return bits1 ^ bits2


def keep_mask(key: Array, keep_prob: float, shape: Sequence[int]) -> Array:
    """`jax.random.bernoulli(key, keep_prob, shape)` [*shape] bool, with the hash unrolled."""
    bits = random_bits(key, shape)
    # jax.random.uniform's float32 construction: 23 random mantissa bits under the exponent of 1.0.
    one = np.array(1.0, np.float32).view(np.uint32)
    uniform = jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | one, jnp.float32) - np.float32(1.0)
    return uniform < np.float32(keep_prob)


class Dropout(nn.Module):
    """`flax.linen.Dropout` (same mask for the same key) on x [...]: zero with probability `rate`."""

    rate: float
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: Array, deterministic: bool) -> Array:
        if self.rate == 0.0 or deterministic:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep_prob = 1.0 - self.rate
        key = self.make_rng(self.rng_collection)
        if jax.default_backend() != "cpu" or not enabled("dropout"):
            mask = jax.random.bernoulli(key, keep_prob, x.shape)
        else:
            mask = keep_mask(key, keep_prob, x.shape)
            # Stored once (one byte per element): otherwise XLA:CPU fuses the whole hash into the
            # backward pass's consumer of the mask as well, and computes it twice. The key, not
            # the mask's first element, feeds the loop's runtime 1: XLA would compile the whole
            # hash again for that element.
            mask = materialize(mask, source=_key_words(key).reshape(-1)[0])
        return jax.lax.select(mask, x / keep_prob, jnp.zeros_like(x))

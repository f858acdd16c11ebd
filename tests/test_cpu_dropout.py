"""Dropout: the unrolled threefry hash equals JAX's (bits, Bernoulli masks, flax's Dropout output,
bit for bit), including odd shapes, typed keys, jit, vmap, non-threefry keys (which fall back),
the published Threefry-2x32 test vectors, a residual block in train mode, and gradients; the
compiled gradient runs the hash once, with no loop (the point of the module)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.models import cpu, layerspp
from score_jax.models.cpu import dropout

SHAPES = [(7,), (3, 5), (2, 4, 4, 3), (1, 3, 1, 33), (5, 1)]


def test_threefry_known_answers():
    # Test vectors of the Random123 reference implementation (Salmon et al., 2011), 20 rounds.
    u32 = lambda *v: [np.uint32(x) for x in v]  # noqa: E731
    cases = [(u32(0, 0), u32(0, 0), (0x6B200159, 0x99BA4EFE)),
             (u32(0xFFFFFFFF, 0xFFFFFFFF), u32(0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
             (u32(0x13198A2E, 0x03707344), u32(0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0))]
    for key, count, expected in cases:
        out = dropout.threefry2x32(jnp.uint32(key[0]), jnp.uint32(key[1]), jnp.uint32(count[0]), jnp.uint32(count[1]))
        assert tuple(int(o) for o in out) == expected


@pytest.mark.parametrize("shape", SHAPES)
def test_bits_and_mask_equal_jax_random(shape):
    for key in (jax.random.PRNGKey(3), jax.random.key(11), jax.random.fold_in(jax.random.PRNGKey(0), 2**31 + 5)):
        np.testing.assert_array_equal(dropout.random_bits(key, shape), jax.random.bits(key, shape))
        np.testing.assert_array_equal(jax.jit(dropout.random_bits, static_argnums=1)(key, shape),
                                      jax.random.bits(key, shape))
        for keep in (0.9, 0.5, 1e-3):
            mask = jax.jit(dropout.keep_mask, static_argnums=(1, 2))(key, keep, shape)
            np.testing.assert_array_equal(mask, jax.random.bernoulli(key, keep, shape))


def test_vmap_and_other_prng_fall_back():
    keys = jax.random.split(jax.random.PRNGKey(1), 4)
    np.testing.assert_array_equal(jax.vmap(lambda k: dropout.random_bits(k, (3, 6)))(keys),
                                  jax.vmap(lambda k: jax.random.bits(k, (3, 6)))(keys))
    rbg = jax.random.key(5, impl="rbg")
    np.testing.assert_array_equal(dropout.keep_mask(rbg, 0.7, (4, 9)), jax.random.bernoulli(rbg, 0.7, (4, 9)))


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_dropout_equals_flax(rate):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 5))
    rngs = {"dropout": jax.random.PRNGKey(42)}
    ours = dropout.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
    flax_out = nn.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(ours, flax_out)
    np.testing.assert_array_equal(dropout.Dropout(rate).apply({}, x, deterministic=True), x)
    if 0 < rate < 1:  # the kept fraction is the Bernoulli mean within 5 standard deviations
        kept = float(jnp.mean(ours != 0))
        assert abs(kept - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / x.size)


def test_block_in_train_mode_equals_flax_dropout(monkeypatch):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 32))
    block = layerspp.ResnetBlockDDPMpp(act=nn.swish, dropout=0.3, init_scale=1.0)
    variables = block.init({"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}, x)
    rngs = {"dropout": jax.random.PRNGKey(7)}
    ours = block.apply(variables, x, train=True, rngs=rngs)
    assert not np.array_equal(ours, block.apply(variables, x, train=False))
    monkeypatch.setattr(cpu, "Dropout", nn.Dropout)
    np.testing.assert_array_equal(ours, block.apply(variables, x, train=True, rngs=rngs))


def _loss_through_conv(x, w, key, module=dropout.Dropout):
    y = module(0.1).apply({}, jnp.tanh(x), deterministic=False, rngs={"dropout": key})
    y = jax.lax.conv_general_dilated(y, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.sin(y))


def test_gradient_equals_flax_and_hashes_once():
    shape = (8, 16, 16, 32)
    args = (jax.random.normal(jax.random.PRNGKey(1), shape), jax.random.normal(jax.random.PRNGKey(2), (3, 3, 32, 32)),
            jax.random.PRNGKey(0))
    grad = jax.jit(jax.grad(_loss_through_conv, argnums=(0, 1)))
    reference = jax.jit(jax.grad(lambda *a: _loss_through_conv(*a, module=nn.Dropout), argnums=(0, 1)))(*args)
    for ours, ref in zip(grad(*args), reference):
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    # Computations that run the hash over the whole array (fused slices of it for one element are
    # cheap): one, where the forward and the backward pass would each fuse their own copy.
    hlo = grad.lower(*args).compile().as_text()
    full = re.escape(",".join(map(str, shape)))
    hashing = [c for c in re.split(r"\n(?=\S)", hlo)
               if re.search(rf"u32\[{full}\]\{{[^}}]*\}} xor\(", c) and re.search(rf"ROOT %\S+ = \w+\[{full}\]", c)]
    if jax.default_backend() == "cpu":  # elsewhere the layer is jax.random's; there it is a rolled loop
        assert len(hashing) == 1
        bernoulli = jax.jit(lambda k: jax.random.bernoulli(k, 0.9, shape)).lower(args[2]).compile().as_text()
        assert " while(" in bernoulli


def test_non_partitionable_threefry_falls_back():
    key, shape = jax.random.PRNGKey(9), (4, 6)
    with jax.threefry_partitionable(False):
        np.testing.assert_array_equal(dropout.random_bits(key, shape), jax.random.bits(key, shape))
        np.testing.assert_array_equal(dropout.keep_mask(key, 0.8, shape), jax.random.bernoulli(key, 0.8, shape))

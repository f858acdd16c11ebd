"""DDPM U-Net, NCSN and NCSNv2: official names, hand-derived parameter counts, closed forms, invariants."""

from __future__ import annotations

import functools
import math

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.models import ddpm, ncsn_layers, ncsnv2, normalization, registry

KEY = jax.random.PRNGKey(0)


def _init(model, x, labels):
    """Variables of model initialised on x, labels (eval mode)."""
    return model.init({"params": KEY, "dropout": jax.random.PRNGKey(1)}, x, labels, train=False)


@functools.lru_cache(maxsize=None)
def _abstract_init(model, size, channels=3):
    """({path: shape} of model's params on [1,size,size,channels], top-level names in creation order).

    Traced with jax.eval_shape: nothing is allocated or compiled (a real init of these networks
    compiles one random kernel per parameter shape, which takes minutes on a busy 2-core CPU).
    """
    order = []

    def init():
        variables = _init(model, jnp.zeros((1, size, size, channels)), jnp.zeros((1,), jnp.int32))
        order.extend(variables["params"].keys())  # flax keeps creation order; eval_shape sorts it
        return variables

    shapes = jax.eval_shape(init)
    flat = flax.traverse_util.flatten_dict(shapes["params"], sep="/")
    return {k: tuple(v.shape) for k, v in flat.items()}, tuple(order)


def _param_shapes(model, size, channels=3):
    return _abstract_init(model, size, channels)[0]


def _random_params(model, size, seed=0):
    """Random parameters with the model's tree (scales ~1 per layer, norms near identity)."""
    rng = np.random.RandomState(seed)
    shapes = _param_shapes(model, size)
    flat = {}
    for path, shape in shapes.items():
        leaf = path.rsplit("/", 1)[-1]
        if leaf in ("alpha", "gamma", "scale", "embedding"):
            value = 1.0 + 0.1 * rng.randn(*shape)
        elif len(shape) >= 2:
            value = rng.randn(*shape) / math.sqrt(math.prod(shape[:-1]))
        else:
            value = 0.1 * rng.randn(*shape)
        flat[tuple(path.split("/"))] = jnp.asarray(value, jnp.float32)
    return flax.traverse_util.unflatten_dict(flat)


def _count(shapes):
    return sum(math.prod(s) for s in shapes.values())


# ------------------------------------------------------------------------------------------------
# Parameter counts derived by hand from the architectures (official score_sde / papers).
# ------------------------------------------------------------------------------------------------

def _conv(cin, cout, k=3, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def _dense(cin, cout):
    return cin * cout + cout


def _ddpm_count(nf, ch_mult, num_res_blocks, attn_res, size, channels, attn_every_up_block=False):
    """DDPM U-Net parameters; attn_every_up_block=True is Ho et al.'s TF placement."""
    temb = 4 * nf
    gn = lambda c: 2 * c  # noqa: E731
    res = lambda i, o: (gn(i) + _conv(i, o) + _dense(temb, o) + gn(o) + _conv(o, o)  # noqa: E731
                        + (_dense(i, o) if i != o else 0))  # NIN shortcut
    attn = lambda c: gn(c) + 4 * _dense(c, c)  # noqa: E731  (q, k, v, proj NINs)
    total = _dense(nf, temb) + _dense(temb, temb) + _conv(channels, nf)
    skips, c, r, last = [nf], nf, size, len(ch_mult) - 1
    for level, mult in enumerate(ch_mult):
        for _ in range(num_res_blocks):
            total += res(c, nf * mult)
            c = nf * mult
            total += attn(c) if r in attn_res else 0
            skips.append(c)
        if level != last:
            total += _conv(c, c)
            skips.append(c)
            r //= 2
    total += 2 * res(c, c) + attn(c)
    for level in reversed(range(len(ch_mult))):
        for _ in range(num_res_blocks + 1):
            total += res(c + skips.pop(), nf * ch_mult[level])
            c = nf * ch_mult[level]
            total += attn(c) if (attn_every_up_block and r in attn_res) else 0
        total += attn(c) if (not attn_every_up_block and r in attn_res) else 0
        if level != 0:
            total += _conv(c, c)
            r *= 2
    return total + gn(c) + _conv(c, channels)


def _ncsn_count(nf, stages, refine, channels, norm, cond=False):
    """NCSN/NCSNv2 parameters; norm(c) is one normaliser's parameter count on c channels.

    stages: (width multiple, dilation) per backbone stage; refine: RefineBlock width multiples;
    cond: NCSN (v1), whose refine blocks also normalise (before each RCU/CRP conv and each MSF input).
    """
    def block(i, o, down, dil):
        n = norm(i)
        if down:
            n += _conv(i, i) + norm(i)
            n += 2 * _conv(i, o) if dil > 1 else _conv(i, o) + _conv(i, o, k=1)
        else:
            n += 0 if i == o else (_conv(i, o) if dil > 1 else _conv(i, o, k=1))
            n += _conv(i, o) + norm(o) + _conv(o, o)
        return n

    rcu = lambda c, blocks: blocks * 2 * (_conv(c, c, bias=False) + (norm(c) if cond else 0))  # noqa
    total, c, widths = _conv(channels, nf), nf, []
    for s, (mult, dil) in enumerate(stages):
        total += block(c, mult * nf, s > 0, dil) + block(mult * nf, mult * nf, False, dil)
        c = mult * nf
        widths.append(c)
    prev = None
    for i, (mult, skip) in enumerate(zip(refine, reversed(widths))):
        f = mult * nf
        ins = [skip] if prev is None else [skip, prev]
        total += sum(rcu(x, 2) for x in ins)
        if prev is not None:
            total += sum(_conv(x, f) + (norm(x) if cond else 0) for x in ins)
        total += 2 * (_conv(f, f, bias=False) + (norm(f) if cond else 0))
        total += rcu(f, 3 if i == len(refine) - 1 else 1)
        prev = f
    return total + norm(nf) + _conv(nf, channels)


def test_ddpm_cifar10_parameter_count_matches_hand_count_and_paper():
    shapes = _param_shapes(ddpm.DDPM(), 32)  # defaults = official CIFAR-10 config
    hand = _ddpm_count(128, (1, 2, 2, 2), 2, (16,), 32, 3)
    assert _count(shapes) == hand == 35_218_947
    # The DDPM paper's 35.7M uses Ho et al.'s TF U-Net, which repeats attention after every
    # up-path block at 16x16; score_sde (whose checkpoints we load) attends once per level.
    paper = _ddpm_count(128, (1, 2, 2, 2), 2, (16,), 32, 3, attn_every_up_block=True)
    assert abs(paper - 35.7e6) / 35.7e6 < 0.01
    assert paper - hand == 2 * (2 * 256 + 4 * (256 * 256 + 256))


def test_ncsnv2_cifar10_parameter_count_matches_hand_count():
    shapes = _param_shapes(ncsnv2.NCSNv2(nf=128), 32)
    in_pp = lambda c: 3 * c  # noqa: E731  InstanceNorm++: alpha, gamma, beta
    assert _count(shapes) == _ncsn_count(128, ((1, 1), (2, 1), (2, 2), (2, 4)), (2, 2, 2, 1), 3, in_pp)


def test_ncsn_cifar10_parameter_count_matches_hand_count():
    # Official NCSN CIFAR-10 config: 10 noise levels, one [10, 3C] embedding per conditional norm.
    shapes = _param_shapes(ncsnv2.NCSN(nf=128, num_scales=10, sigma_max=1.0, scale_by_sigma=False), 32)
    cond_pp = lambda c: 10 * 3 * c  # noqa: E731
    assert _count(shapes) == _ncsn_count(128, ((1, 1), (2, 1), (2, 2), (2, 4)), (2, 2, 2, 1), 3, cond_pp,
                                         cond=True)


@pytest.mark.parametrize("cls,size,stages,refine", [
    (ncsnv2.NCSNv2_128, 128, ((1, 1), (2, 1), (2, 1), (4, 2), (4, 4)), (4, 2, 2, 1, 1)),
    (ncsnv2.NCSNv2_256, 256, ((1, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 4)), (4, 2, 2, 2, 1, 1)),
])
def test_ncsnv2_large_parameter_counts_match_hand_count(cls, size, stages, refine):
    shapes = _param_shapes(cls(nf=128), size)
    assert _count(shapes) == _ncsn_count(128, stages, refine, 3, lambda c: 3 * c)


# ------------------------------------------------------------------------------------------------
# Official module names, in official creation order.
# ------------------------------------------------------------------------------------------------

def test_ddpm_official_paths():
    shapes = _param_shapes(ddpm.DDPM(), 32)
    top = list(_abstract_init(ddpm.DDPM(nf=32, ch_mult=(1, 2), attn_resolutions=(4,)), 8)[1])
    assert top == ["Dense_0", "Dense_1", "Conv_0", "ResnetBlockDDPM_0", "ResnetBlockDDPM_1",
                   "Downsample_0", "ResnetBlockDDPM_2", "AttnBlock_0", "ResnetBlockDDPM_3",
                   "AttnBlock_1", "ResnetBlockDDPM_4", "AttnBlock_2", "ResnetBlockDDPM_5",
                   "ResnetBlockDDPM_6", "ResnetBlockDDPM_7", "ResnetBlockDDPM_8", "AttnBlock_3",
                   "Upsample_0", "ResnetBlockDDPM_9", "ResnetBlockDDPM_10", "ResnetBlockDDPM_11",
                   "GroupNorm_0", "Conv_1"]
    expected = {
        "Dense_0/kernel": (128, 512), "Dense_1/kernel": (512, 512), "Conv_0/kernel": (3, 3, 3, 128),
        "ResnetBlockDDPM_0/Dense_0/kernel": (512, 128),
        "ResnetBlockDDPM_2/NIN_0/W": (128, 256),  # first block of the 16x16 level widens 128 -> 256
        "AttnBlock_0/NIN_3/W": (256, 256), "AttnBlock_0/GroupNorm_0/scale": (256,),
        "Downsample_0/Conv_0/kernel": (3, 3, 128, 128),
        "ResnetBlockDDPM_10/NIN_0/W": (512, 256),  # first up block: concat 256 + 256 skip
        "Upsample_2/Conv_0/kernel": (3, 3, 256, 256),
        "GroupNorm_0/scale": (128,), "Conv_1/kernel": (3, 3, 128, 3),
    }
    for path, shape in expected.items():
        assert shapes[path] == shape, path
    assert "Upsample_3/Conv_0/kernel" not in shapes


def test_ncsnv2_official_paths():
    shapes = _param_shapes(ncsnv2.NCSNv2(nf=128), 32)
    expected = {
        "Conv_0/kernel": (3, 3, 3, 128), "Conv_1/kernel": (3, 3, 128, 3),
        "InstanceNorm2dPlus_0/alpha": (1, 1, 1, 128),
        "ResidualBlock_0/InstanceNorm2dPlus_1/gamma": (1, 1, 1, 128),
        "ResidualBlock_2/ConvMeanPool_0/Conv_0/kernel": (3, 3, 128, 256),
        "ResidualBlock_2/ConvMeanPool_1/Conv_0/kernel": (1, 1, 128, 256),
        "ResidualBlock_4/Conv_2/kernel": (3, 3, 256, 256),  # dilated 'down' block: 3x3 shortcut last
        "RefineBlock_0/CRPBlock_0/Conv_1/kernel": (3, 3, 256, 256),
        "RefineBlock_1/MSFBlock_0/Conv_1/bias": (256,),
        "RefineBlock_3/RCUBlock_0/Conv_3/kernel": (3, 3, 128, 128),
        "RefineBlock_3/RCUBlock_2/Conv_5/kernel": (3, 3, 128, 128),  # end block: 3 output units
    }
    for path, shape in expected.items():
        assert shapes[path] == shape, path
    assert "RefineBlock_0/MSFBlock_0/Conv_0/kernel" not in shapes  # start block has no fusion
    assert "RefineBlock_0/RCUBlock_1/Conv_0/kernel" in shapes  # one input RCU + one output RCU
    assert not any("bias" in p for p in shapes if "RCUBlock" in p or "CRPBlock" in p)


def test_ncsn_official_paths():
    shapes = _param_shapes(ncsnv2.NCSN(nf=16, num_scales=10), 32)
    expected = {
        "ConditionalResidualBlock_0/ConditionalInstanceNorm2dPlus_0/Embed_0/embedding": (10, 48),
        # the 'down' block's second norm (broken call in the official JAX code, applied here)
        "ConditionalResidualBlock_2/ConditionalInstanceNorm2dPlus_1/Embed_0/embedding": (10, 48),
        "CondRefineBlock_1/CondMSFBlock_0/ConditionalInstanceNorm2dPlus_1/Embed_0/embedding": (10, 96),
        "CondRefineBlock_0/CondCRPBlock_0/Conv_1/kernel": (3, 3, 32, 32),
        "CondRefineBlock_3/CondRCUBlock_2/ConditionalInstanceNorm2dPlus_5/Embed_0/embedding": (10, 48),
        "ConditionalInstanceNorm2dPlus_0/Embed_0/embedding": (10, 48),
        "Conv_1/kernel": (3, 3, 16, 3),
    }
    for path, shape in expected.items():
        assert shapes[path] == shape, path


def test_registry_names():
    assert registry.MODELS["ddpm"] is ddpm.DDPM
    assert registry.MODELS["ncsn"] is ncsnv2.NCSN
    assert registry.MODELS["ncsnv2_64"] is ncsnv2.NCSNv2
    assert registry.MODELS["ncsnv2_128"] is ncsnv2.NCSNv2_128
    assert registry.MODELS["ncsnv2_256"] is ncsnv2.NCSNv2_256


# ------------------------------------------------------------------------------------------------
# Forward passes at small sizes.
# ------------------------------------------------------------------------------------------------

SMALL = {
    "ddpm": (ddpm.DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,)), 8),
    "ncsn": (ncsnv2.NCSN(nf=8, num_scales=5, scale_by_sigma=False), 8),
    "ncsnv2_64": (ncsnv2.NCSNv2(nf=8, num_scales=5), 8),
    "ncsnv2_128": (ncsnv2.NCSNv2_128(nf=4, num_scales=5), 16),
    "ncsnv2_256": (ncsnv2.NCSNv2_256(nf=4, num_scales=5), 16),
}
# Every forward below uses a batch of 2 at the model's size, so eager calls reuse the per-op
# executables compiled by the first call (cold compilation dominates these tests on CPU).
LABELS = jnp.array([0, 3], jnp.int32)


@pytest.fixture(scope="module")
def small_models():
    """name -> (model, random params, x [2,S,S,3] in [0,1], its output at LABELS) per model."""
    out = {}
    for name, (model, size) in SMALL.items():
        x = jax.random.uniform(jax.random.PRNGKey(7), (2, size, size, 3))
        params = _random_params(model, size)
        y = model.apply({"params": params}, x, LABELS, train=False)
        out[name] = (model, params, x, y)
    return out


def _apply(model, params, x, labels=LABELS, **kw):
    return model.apply({"params": params}, x, labels, **{"train": False, **kw})


def _close(a, b, ref, rtol=1e-4):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-5 * float(np.max(np.abs(ref))))


@pytest.mark.parametrize("name", list(SMALL))
def test_forward_shape_finite_and_per_example(small_models, name):
    model, params, x, out = small_models[name]
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.std(out)) > 1e-3
    # Instance / group norms act per example: changing example 1 leaves example 0's output alone.
    other = _apply(model, params, x.at[1].set(1.0 - x[1]))
    _close(other[0], out[0], out)
    assert float(jnp.max(jnp.abs(other[1] - out[1]))) > 1e-3


@pytest.mark.parametrize("name", ["ddpm", "ncsnv2_64", "ncsn"])
def test_centered_flag_maps_unit_interval_to_symmetric(small_models, name):
    model, params, x, out = small_models[name]
    centred = model.clone(centered=not model.centered)
    xin = 2 * x - 1 if centred.centered else (x + 1) / 2
    _close(_apply(centred, params, xin), out, out)


def test_ncsnv2_divides_by_descending_geometric_sigma(small_models):
    model, params, x, _ = small_models["ncsnv2_64"]
    same = jnp.concatenate([x[:1], x[:1]])
    out = np.asarray(_apply(model, params, same))
    n = model.num_scales
    sigma = model.sigma_max * (model.sigma_min / model.sigma_max) ** (np.asarray(LABELS) / (n - 1))
    # NCSNv2 is unconditional apart from the division: out * sigma(label) ignores the label.
    unscaled = out * sigma[:, None, None, None]
    _close(unscaled[1], unscaled[0], unscaled, rtol=2e-4)
    plain = _apply(model.clone(scale_by_sigma=False), params, same)
    _close(unscaled, plain, unscaled, rtol=2e-4)


def test_ddpm_scale_by_sigma_and_label_dtype(small_models):
    model, params, x, plain = small_models["ddpm"]
    scaled = _apply(model.clone(scale_by_sigma=True, num_scales=5), params, x)
    sigma = 50.0 * (0.01 / 50.0) ** (np.asarray(LABELS) / 4)
    _close(np.asarray(scaled) * sigma[:, None, None, None], plain, plain)
    with pytest.raises(ValueError, match="labels"):
        _apply(model.clone(scale_by_sigma=True), params, x, LABELS.astype(jnp.float32))


def test_ncsn_labels_select_embedding_rows(small_models):
    model, params, x, out = small_models["ncsn"]
    # With every noise level's norm parameters equal to row 1's, the label must not matter.
    same = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.broadcast_to(v[1:2], v.shape) if "embedding" in str(p) else v, params)
    a = _apply(model, same, x, jnp.array([1, 1], jnp.int32))
    b = _apply(model, same, x)
    _close(a, b, a)
    assert float(jnp.max(jnp.abs(_apply(model, params, x, jnp.array([1, 1], jnp.int32))
                                 - out))) > 1e-3


def test_ddpm_dropout_only_in_train_mode(small_models):
    model, params, x, eval_out = small_models["ddpm"]
    model = model.clone(dropout=0.5)
    again = _apply(model, params, x, rngs={"dropout": KEY})
    np.testing.assert_array_equal(eval_out, again)
    train_out = _apply(model, params, x, train=True, rngs={"dropout": KEY})
    assert float(jnp.max(jnp.abs(train_out - eval_out))) > 1e-3


@pytest.mark.parametrize("model,match", [
    (ddpm.DDPM(nf=32, ch_mult=(1,), nonlinearity="tanh"), "nonlinearity"),
    (ddpm.DDPM(nf=32, ch_mult=(1,), normalization="BatchNorm"), "normalization"),
    (ncsnv2.NCSNv2(nf=4, interpolation="cubic"), "interpolation"),
    (ncsnv2.NCSN(nf=4, normalization="GroupNorm"), "normalization"),
])
def test_invalid_switches_raise_value_error(model, match):
    with pytest.raises(ValueError, match=match):
        jax.eval_shape(lambda: _init(model, jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32)))


# ------------------------------------------------------------------------------------------------
# Normalisation layers and NCSN convs against closed forms (numpy references).
# ------------------------------------------------------------------------------------------------

def _np_instance_norm_plus(x, gamma, alpha, beta):
    """Closed form of InstanceNorm++ (NCSN paper, eq. in appendix A) in float64 numpy."""
    x = np.asarray(x, np.float64)
    mu, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    z = (mu - mu.mean(-1, keepdims=True)) / np.sqrt(mu.var(-1, keepdims=True) + 1e-5)
    return gamma * ((x - mu) / np.sqrt(var + 1e-5) + alpha * z) + beta


def test_instance_norm_plus_constant_channels_closed_form():
    m = np.array([[0.5, -1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 4.0]], np.float32)  # [B, C]
    x = np.broadcast_to(m[:, None, None, :], (2, 5, 5, 4))
    alpha, gamma, beta = ([1.5, 0.5, -1.0, 2.0], [2.0, 1.0, 3.0, 0.5], [0.1, -0.2, 0.3, 0.0])
    p = {k: jnp.asarray(v, jnp.float32).reshape(1, 1, 1, 4)
         for k, v in dict(alpha=alpha, gamma=gamma, beta=beta).items()}
    out = normalization.InstanceNorm2dPlus().apply({"params": p}, jnp.asarray(x))
    # A constant channel normalises to 0; only gamma * alpha * (standardised channel means) + beta remains.
    z = (m - m.mean(-1, keepdims=True)) / np.sqrt(m.var(-1, keepdims=True) + 1e-5)
    expected = np.asarray(gamma) * np.asarray(alpha) * z + np.asarray(beta)
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None, :], x.shape), rtol=1e-5,
                               atol=1e-5)


def test_instance_norm_plus_init_and_moments():
    x = np.random.RandomState(3).randn(2, 6, 6, 5).astype(np.float32) * 2 + 0.5
    layer = normalization.InstanceNorm2dPlus()
    p = jax.tree_util.tree_map(np.asarray, layer.init(KEY, x)["params"])
    assert p["beta"].shape == (1, 1, 1, 5) and np.all(p["beta"] == 0)
    for k in ("alpha", "gamma"):
        assert 0 < np.max(np.abs(p[k] - 1.0)) < 0.1  # N(1, 0.02^2)
    out = np.asarray(layer.apply({"params": p}, x), np.float64)
    mean, var = x.mean(axis=(1, 2)), x.var(axis=(1, 2))
    z = (mean - mean.mean(-1, keepdims=True)) / np.sqrt(mean.var(-1, keepdims=True) + 1e-5)
    g, a = p["gamma"][0, 0], p["alpha"][0, 0]
    np.testing.assert_allclose(out.mean(axis=(1, 2)), g * a * z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(1, 2)), g ** 2 * var / (var + 1e-5), rtol=1e-4)


def test_conditional_instance_norm_plus_is_per_label_instance_norm_plus():
    x = np.random.RandomState(4).randn(3, 4, 4, 6).astype(np.float32) * 2 + 0.5
    y = np.array([2, 0, 2], np.int32)
    layer = normalization.ConditionalInstanceNorm2dPlus(num_classes=4)
    table = np.asarray(layer.init(KEY, x, y)["params"]["Embed_0"]["embedding"])
    assert table.shape == (4, 18)
    assert np.all(table[:, 12:] == 0)  # beta columns start at zero
    assert abs(table[:, :12].mean() - 1.0) < 0.02 and 0.005 < table[:, :12].std() < 0.05
    table = table + np.random.RandomState(5).randn(*table.shape).astype(np.float32) * 0.3
    out = layer.apply({"params": {"Embed_0": {"embedding": table}}}, x, y)
    gamma, alpha, beta = (table[y, k * 6:(k + 1) * 6][:, None, None, :] for k in range(3))
    np.testing.assert_allclose(out, _np_instance_norm_plus(x, gamma, alpha, beta), rtol=1e-4, atol=1e-4)


def test_instance_and_variance_norm_closed_forms():
    x = np.random.RandomState(6).randn(2, 5, 5, 3).astype(np.float32) * 2 + 0.5
    mean, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    scale = np.array([2.0, 0.5, 1.0], np.float32).reshape(1, 1, 1, 3)
    bias = np.array([0.3, 0.0, -1.0], np.float32).reshape(1, 1, 1, 3)
    out = normalization.InstanceNorm2d().apply({"params": {"scale": scale, "bias": bias}}, x)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5) * scale + bias, rtol=1e-4, atol=1e-5)
    out = normalization.VarianceNorm2d().apply({"params": {"scale": scale}}, x)
    np.testing.assert_allclose(out, x / np.sqrt(var + 1e-5) * scale, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="normalization"):
        normalization.get_normalization("LayerNorm")
    with pytest.raises(ValueError, match="num_classes"):
        normalization.get_normalization("InstanceNorm++", conditional=True)


def test_ncsn_conv_init_is_pytorch_uniform():
    class Conv(nn.Module):
        @nn.compact
        def __call__(self, x):
            return ncsn_layers.ncsn_conv3x3(x, 64)

    p = jax.tree_util.tree_map(np.asarray, Conv().init(KEY, jnp.zeros((1, 4, 4, 32)))["params"]["Conv_0"])
    bound = 1 / math.sqrt(9 * 32)  # PyTorch default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.max(np.abs(p["kernel"])) <= bound and np.max(np.abs(p["bias"])) <= bound
    assert abs(p["kernel"].std() - bound / math.sqrt(3)) < 0.05 * bound
    assert p["bias"].std() > 0.3 * bound  # drawn like the kernel, not zero-initialised


def test_sigma_table_closed_form():
    s = ncsn_layers.get_sigmas(0.01, 50.0, 232)
    ref = 50.0 * (0.01 / 50.0) ** (np.arange(232) / 231)
    np.testing.assert_allclose(s, ref, rtol=1e-5)

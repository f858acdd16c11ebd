"""NCSN++ / DDPM++ against the official score_sde fixtures; FIR resampling against scipy; remat and bf16."""

import json

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import signal

from score_jax.models import layers, registry
from score_jax.models import up_or_down_sampling as updown
from score_jax.models.ncsnpp import NCSNpp

CASES = ["ddpmpp_vp_continuous", "ncsnpp_ve_continuous"]


def _load(fixtures_dir, name):
    with np.load(fixtures_dir / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def _config(fixture):
    return ml_collections.ConfigDict(json.loads(str(fixture["config_json"])))


def _params(fixture):
    """The fixture's params/<path> leaves as a nested params tree."""
    flat = {tuple(k.split("/")[1:]): jnp.asarray(v) for k, v in fixture.items() if k.startswith("params/")}
    return flax.traverse_util.unflatten_dict(flat)


def _flat(tree):
    return {"params/" + "/".join(k): v for k, v in flax.traverse_util.flatten_dict(tree).items()}


def _fast_jit(fn, *args):
    """fn(*args) compiled with XLA's backend optimisations off: these tests are compile-bound on CPU."""
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
    return jax.jit(fn).lower(*args).compile(compiler_options=options)(*args)


def _init(model, key, image_size, channels):
    """registry.init_model, compiled (the test checks that compiling keeps the official bits)."""
    return _fast_jit(lambda k: registry.init_model(k, model, image_size, channels), key)


def _shapes(model, image_size=16, channels=3):
    """Shapes and dtypes of init_model's params, without computing them."""
    variables = jax.eval_shape(lambda k: registry.init_model(k, model, image_size, channels), jax.random.PRNGKey(0))
    return {k: (v.shape, v.dtype) for k, v in _flat(variables["params"]).items()}


def _forward(model, params, x, labels):
    return _fast_jit(lambda p, x, l: model.apply({"params": p}, x, l, train=False), params, x, labels)


def _assert_close_to_ref(out, ref):
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("case", CASES)
def test_init_matches_official_tree_and_values(fixtures_dir, case):
    fixture = _load(fixtures_dir, case)
    cfg = _config(fixture)
    model = registry.get_model(cfg)
    variables = _init(model, jax.random.PRNGKey(42), cfg.data.image_size, cfg.data.num_channels)
    assert set(variables) == {"params"}  # the official model has no other collections
    ours = {k: np.asarray(v) for k, v in _flat(variables["params"]).items()}
    ref = {k: v for k, v in fixture.items() if k.startswith("params/")}
    assert sorted(ours) == sorted(ref)
    for key, value in ref.items():
        assert ours[key].shape == value.shape, key
        assert ours[key].dtype == value.dtype, key
        np.testing.assert_array_equal(ours[key], value, err_msg=key)


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_official(fixtures_dir, case):
    fixture = _load(fixtures_dir, f"{case}_perturbed")
    model = registry.get_model(_config(fixture))
    out = _forward(model, _params(fixture), fixture["x"], fixture["labels"])
    assert out.dtype == jnp.float32
    _assert_close_to_ref(out, fixture["output"])


@pytest.mark.parametrize("case", CASES)
def test_remat_and_bf16_keep_the_parameter_tree(fixtures_dir, case):
    cfg = _config(_load(fixtures_dir, case))
    reference = _shapes(registry.get_model(cfg))
    assert _shapes(registry.get_model(cfg, remat=True)) == reference
    assert _shapes(registry.get_model(cfg, dtype=jnp.bfloat16)) == reference  # params stay float32


def test_bf16_forward_within_its_precision(fixtures_dir):
    fixture = _load(fixtures_dir, "ncsnpp_ve_continuous_perturbed")
    model = registry.get_model(_config(fixture), dtype=jnp.bfloat16)
    out = _forward(model, _params(fixture), fixture["x"], fixture["labels"])
    assert out.dtype == jnp.float32
    # bfloat16 keeps 8 significant bits (relative spacing 2^-7 ~ 8e-3 per operation).
    ref = fixture["output"]
    assert float(jnp.linalg.norm(out - ref) / np.linalg.norm(ref)) < 2e-2


def test_remat_gives_the_same_outputs_and_gradients():
    kwargs = dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(4,), image_size=4, dropout=0.0,
                  init_scale=1.0)  # init_scale 1: the gradients of every block are far from 0
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 3))
    labels = jnp.array([0.1, 5.0])
    params = _init(NCSNpp(**kwargs), jax.random.PRNGKey(0), 4, 3)["params"]

    def value_and_grad(model):
        loss = lambda p: jnp.sum(model.apply({"params": p}, x, labels, train=True) ** 2)
        return _fast_jit(jax.value_and_grad(loss), params)

    v_plain, g_plain = value_and_grad(NCSNpp(**kwargs))
    v_remat, g_remat = value_and_grad(NCSNpp(**kwargs, remat=True))
    np.testing.assert_allclose(v_remat, v_plain, rtol=1e-5)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(g_plain))
    for a, b in zip(jax.tree_util.tree_leaves(g_plain), jax.tree_util.tree_leaves(g_remat)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * scale)


VARIANTS = [
    dict(resblock_type="ddpm", progressive="output_skip", progressive_input="input_skip",
         progressive_combine="cat", fir=False, embedding_type="positional"),
    dict(resblock_type="ddpm", progressive="residual", progressive_input="residual", fir=True),
    dict(resblock_type="biggan", progressive="output_skip", progressive_input="input_skip", fir=True,
         progressive_combine="sum", conditional=False, resamp_with_conv=False),
    dict(resblock_type="biggan", progressive="residual", progressive_input="none", fir=False,
         embedding_type="positional", scale_by_sigma=True, skip_rescale=False, num_scales=10),
]


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_shapes(variant):
    model = NCSNpp(nf=8, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=16, **variant)
    x, labels = jnp.zeros((2, 16, 16, 3)), jnp.array([1, 3], jnp.int32)
    out, _ = jax.eval_shape(lambda k: model.init_with_output({"params": k, "dropout": k}, x, labels),
                            jax.random.PRNGKey(0))
    assert out.shape == x.shape and out.dtype == jnp.float32


def test_variant_runs_finite():
    model = NCSNpp(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8, **VARIANTS[0])
    x, labels = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3)), jnp.array([3.0, 700.0])
    params = _init(model, jax.random.PRNGKey(1), 8, 3)["params"]
    out = _forward(model, params, x, labels)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("field, value", [("resblock_type", "resnet"), ("progressive", "skip"),
                                          ("progressive_input", "output_skip"), ("progressive_combine", "max"),
                                          ("embedding_type", "learned"), ("nonlinearity", "gelu")])
def test_bad_switch_raises(field, value):
    with pytest.raises(ValueError, match=field):
        NCSNpp(**{field: value})


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ValueError, match="ncsnpp"):
        registry.get_model(ml_collections.ConfigDict({"model": {"name": "unet"}}))


def test_get_model_reads_data_and_model_fields():
    cfg = ml_collections.ConfigDict({"model": {"name": "ncsnpp", "nf": 32, "ch_mult": [1, 2], "sigma_max": 348.0,
                                               "dtype": "bfloat16", "remat": True},
                                     "data": {"image_size": 64, "num_channels": 1, "centered": True}})
    model = registry.get_model(cfg, nf=64)
    assert (model.nf, model.ch_mult, model.sigma_max, model.remat) == (64, (1, 2), 348.0, True)
    assert model.dtype == jnp.bfloat16
    assert (model.image_size, model.num_channels, model.centered) == (64, 1, True)


def test_timestep_embedding_closed_form():
    t = jnp.array([0.0, 3.0, 999.0])
    emb = layers.get_timestep_embedding(t, 6)
    freqs = np.exp(-np.log(10000.0) * np.arange(3) / 2)
    expected = np.concatenate([np.sin(np.outer(t, freqs)), np.cos(np.outer(t, freqs))], axis=1)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-4)


def _scipy_upfirdn(x, k1, up, down, pad0, pad1):
    """StyleGAN2 upfirdn_2d for a separable kernel k1, via scipy.signal.upfirdn along H and W."""
    n, length = len(k1), x.shape[1] * up
    # scipy gives the full convolution of the zero-stuffed signal; StyleGAN2's output pixel m, after
    # padding (pad0, pad1) and a valid convolution, is full-convolution pixel m + n - 1 - pad0.
    full = signal.upfirdn(k1, signal.upfirdn(k1, x, up=up, axis=1), up=up, axis=2)
    margin = n + up + abs(pad0) + abs(pad1)
    full = np.pad(full, [(0, 0), (margin, margin), (margin, margin), (0, 0)])
    start, size = margin + n - 1 - pad0, length + pad0 + pad1 - n + 1
    return full[:, start:start + size:down, start:start + size:down]


@pytest.mark.parametrize("kernel", [(1, 3, 3, 1), (1, 1)])
def test_fir_resampling_matches_scipy(kernel):
    x = np.random.RandomState(0).randn(2, 8, 8, 3).astype(np.float32)
    k1 = np.asarray(kernel, np.float64) / np.sum(kernel)
    p = len(kernel) - 2
    up = updown.upsample_2d(jnp.asarray(x), kernel, factor=2)
    np.testing.assert_allclose(up, _scipy_upfirdn(x, 2 * k1, 2, 1, (p + 1) // 2 + 1, p // 2), atol=1e-5)
    down = updown.downsample_2d(jnp.asarray(x), kernel, factor=2)
    np.testing.assert_allclose(down, _scipy_upfirdn(x, k1, 1, 2, (p + 1) // 2, p // 2), atol=1e-5)
    assert up.shape == (2, 16, 16, 3) and down.shape == (2, 4, 4, 3)


def test_nearest_kernel_is_naive_resampling():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 3))
    np.testing.assert_allclose(updown.upsample_2d(x, (1, 1)), updown.naive_upsample_2d(x), atol=1e-6)
    np.testing.assert_allclose(updown.downsample_2d(x, (1, 1)), updown.naive_downsample_2d(x), atol=1e-6)


def test_fused_conv_equals_resample_then_conv_away_from_borders():
    rng = np.random.RandomState(1)
    x, w = jnp.asarray(rng.randn(1, 12, 12, 2), jnp.float32), jnp.asarray(rng.randn(3, 3, 2, 4), jnp.float32)
    conv = lambda z: jax.lax.conv_general_dilated(z, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    up = updown.upsample_conv_2d(x, w, (1, 3, 3, 1))
    assert up.shape == (1, 24, 24, 4)
    np.testing.assert_allclose(up[:, 3:-3, 3:-3], conv(updown.upsample_2d(x, (1, 3, 3, 1)))[:, 3:-3, 3:-3], atol=1e-4)
    down = updown.conv_downsample_2d(x, w, (1, 3, 3, 1))
    assert down.shape == (1, 6, 6, 4)
    expected = updown.downsample_2d(conv(x), (1, 3, 3, 1))
    np.testing.assert_allclose(down[:, 2:-2, 2:-2], expected[:, 2:-2, 2:-2], atol=1e-4)

"""Every config under configs/: loads, is locked, keeps the official values, and builds its network.

Oracles: values read in the official score_sde config files, the full configs stored in the official
parity fixtures (config_json), the fixtures' parameter paths and counts, and the parameter counts the
DDPM paper reports (Ho et al. 2020, Appendix B).
"""

import dataclasses
import importlib
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_jax.metrics import inception_weights as iw
from score_jax.models import registry

CONFIG_ROOT = pathlib.Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(str(p.relative_to(CONFIG_ROOT).with_suffix("")) for p in CONFIG_ROOT.rglob("*.py")
                 if p.name != "__init__.py" and not p.name.startswith("default_"))
DIGITS = [name for name in CONFIGS if "digits" in name]

# score_jax fields added to every default_* base, with their defaults.
ADDITIONS = {
    "training.n_jitted_steps": 0, "training.nan_policy": "stop", "model.remat": False, "model.dtype": "float32",
    "model.ema_warmup": False, "data.data_dir": "", "data.download": False, "eval.bpd_num_repeats": 5,
    "sampling.ode_rtol": 1e-5, "sampling.ode_atol": 1e-5, "eval.bpd_rtol": 1e-5, "eval.bpd_atol": 1e-5,
    "eval.sample_metrics": ("fid", "is", "kid"), "training.snapshot_num_samples": 128,
    "data.tfrecords_path": "", "data.path": "", "data.eval_fraction": 0.1, "data.num_workers": 0,
    "eval.inception_weights": "",
    "eval.inception_url": iw.PTH_URL,
    "eval.inception_sha256": iw.PTH_SHA256, "eval.stats_file": "",
    "eval.stats_split": "train", "eval.num_seeds": 1, "sampling.nfe": 20, "sampling.order": 0,
    "sampling.dpm_method": "", "sampling.skip_type": "", "sampling.eta": 0.0, "sampling.s_churn": 0.0,
    "sampling.rel_tol": 0.0, "sampling.abs_tol": 0.0, "training.importance_weighting": False,
    "eval.dequantization": "uniform", "eval.bpd_error_control": "per_part",
    "sample.task": "unconditional", "sample.num": 64,
    "sample.batch_size": 64, "sample.input": "", "sample.mask": "left_half", "sample.mask_fraction": 0.5,
    "sample.ckpt": 0, "sample.folder": "sample", "sample.num_points": 8, "sample.scale": 1.0,
    "classifier.name": "wideresnet_noise_conditional", "classifier.lr": 2e-4, "classifier.batch_size": 128,
    "classifier.n_iters": 200000, "classifier.ema_rate": 0.999, "classifier.eps": 1e-5,
    "sampling.s_tmin": 0.0, "sampling.s_tmax": 0.0, "sampling.s_noise": 0.0,
    "model.preconditioning": "none", "model.sigma_data": 0.5, "training.loss": "",
    "training.p_mean": -1.2, "training.p_std": 1.2, "sampling.rho": 0.0, "sampling.prediction": "",
    "sampling.unipc_variant": "", "sampling.grid": (),
}
# The official TFRecords paths of the FFHQ / CelebA-HQ configs (data.tfrecords_path is official
# there, an addition elsewhere).
TFRECORDS = {
    "ve/celebahq_256_ncsnpp_continuous": "/home/yangsong/ncsc/celebahq/r08.tfrecords",
    "ve/ffhq_ncsnpp_continuous": "/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords",
    "ve/ffhq_256_ncsnpp_continuous": "/home/yangsong/ncsc/ffhq/ffhq-r08.tfrecords",
    "ve/celebahq_ncsnpp_continuous": "/atlas/u/yangsong/celeba_hq/-r10.tfrecords",
    "vp/ddpm/celebahq": "/atlas/u/yangsong/celeba_hq/-r10.tfrecords",
}
# Where a config sets an addition on purpose: the official 1024x1024 files fix n_jitted_steps; the
# digits base sets its CPU choices.
ADDITION_EXCEPTIONS = {
    **{name: {"data.tfrecords_path": path} for name, path in TFRECORDS.items()},
    "ve/celebahq_ncsnpp_continuous": {"training.n_jitted_steps": 1,
                                      "data.tfrecords_path": TFRECORDS["ve/celebahq_ncsnpp_continuous"]},
    "ve/ffhq_ncsnpp_continuous": {"training.n_jitted_steps": 2,
                                  "data.tfrecords_path": TFRECORDS["ve/ffhq_ncsnpp_continuous"]},
    **{name: {"model.ema_warmup": True, "eval.bpd_num_repeats": 1, "sampling.ode_rtol": 1e-3,
              "sampling.ode_atol": 1e-3, "eval.bpd_rtol": 1e-3, "eval.bpd_atol": 1e-3,
              "training.snapshot_num_samples": 64,
              "eval.sample_metrics": ("fd_digits", "is_digits", "precision_digits", "recall_digits",
                                      "class_histogram"),
              "sample.num": 16, "sample.batch_size": 16, "classifier.name": "digits_noise_conditional",
              "classifier.lr": 2e-3, "classifier.n_iters": 1500, "classifier.ema_rate": 0.99,
              "classifier.eps": 1e-3, "sample.scale": 4.0, "eval.bpd_error_control": "rms"}
       for name in DIGITS},
}
ADDITION_EXCEPTIONS["vp/digits_ddpmpp_continuous"]["sampling.s_churn"] = 10.0
_EDM = {"model.preconditioning": "edm", "training.loss": "edm", "sampling.nfe": 35}
ADDITION_EXCEPTIONS["edm/digits_ddpmpp"].update(_EDM, **{"model.sigma_data": 0.75})
ADDITION_EXCEPTIONS["edm/cifar10_ddpmpp"] = {**_EDM, "model.ema_warmup": True}

# Values read in the official score_sde config files (yang-song/score_sde, configs/...), and for EDM
# in NVlabs/edm's train.py (--arch=ddpmpp --precond=edm defaults) and training_loop.py.
OFFICIAL = {
    "edm/cifar10_ddpmpp": {
        "model.nf": 128, "model.ch_mult": (2, 2, 2), "model.num_res_blocks": 4,
        "model.attn_resolutions": (16,), "model.embedding_type": "positional", "model.dropout": 0.13,
        "model.sigma_min": 0.002, "model.sigma_max": 80.0, "model.sigma_data": 0.5,
        "training.p_mean": -1.2, "training.p_std": 1.2, "training.batch_size": 512,
        # 200 Mimg; learning-rate ramp-up over 10 Mimg; EMA half-life 0.5 Mimg per 512 images.
        "training.n_iters": 200_000_000 // 512, "optim.warmup": 10_000_000 // 512,
        "model.ema_rate": round(0.5 ** (512 / 500_000), 5), "optim.lr": 1e-3, "optim.beta1": 0.9,
        "optim.eps": 1e-8, "data.random_flip": False, "data.centered": True,
        "sampling.method": "heun", "sampling.nfe": 35, "training.sde": "vesde",
    },
    "ve/cifar10_ncsnpp_continuous": {
        "model.nf": 128, "model.ch_mult": (1, 2, 2, 2), "model.fir": True, "model.sigma_max": 50,
        "model.sigma_min": 0.01, "model.num_res_blocks": 4, "model.embedding_type": "fourier",
        "model.progressive_input": "residual", "model.ema_rate": 0.999, "training.sde": "vesde",
        "training.continuous": True, "training.reduce_mean": False, "training.batch_size": 128,
        "training.n_iters": 1300001, "sampling.predictor": "reverse_diffusion", "sampling.corrector": "langevin",
        "sampling.snr": 0.16, "data.centered": False, "eval.batch_size": 1024, "optim.lr": 2e-4,
        "optim.warmup": 5000},
    "ve/cifar10_ncsnpp_deep_continuous": {"model.num_res_blocks": 8, "training.n_iters": 950001},
    "ve/celebahq_256_ncsnpp_continuous": {
        "model.sigma_max": 348, "model.ch_mult": (1, 1, 2, 2, 2, 2, 2), "model.num_res_blocks": 2,
        "model.progressive": "output_skip", "model.progressive_input": "input_skip", "model.num_scales": 2000,
        "model.dropout": 0.0, "data.dataset": "CelebAHQ", "data.image_size": 256, "training.batch_size": 64,
        "sampling.snr": 0.075, "eval.batch_size": 512},
    "ve/church_ncsnpp_continuous": {"model.sigma_max": 380, "data.category": "church_outdoor"},
    "ve/bedroom_ncsnpp_continuous": {"model.sigma_max": 378, "data.category": "bedroom"},
    "ve/celebahq_ncsnpp_continuous": {
        "model.sigma_max": 1348, "model.nf": 16, "model.ch_mult": (1, 2, 4, 8, 16, 32, 32, 32),
        "model.num_res_blocks": 1, "model.ema_rate": 0.9999, "data.image_size": 1024, "training.batch_size": 8,
        "sampling.snr": 0.15, "eval.end_ckpt": 96},
    "ve/ffhq_ncsnpp_continuous": {"data.dataset": "FFHQ", "training.reduce_mean": True, "model.sigma_max": 1348},
    "ve/celeba_ncsnpp": {"model.sigma_max": 90.0, "data.image_size": 64, "sampling.snr": 0.17,
                         "training.continuous": False, "model.embedding_type": "positional"},
    "ve/cifar10_ddpm": {"model.name": "ddpm", "model.scale_by_sigma": True, "model.ema_rate": 0.999},
    "vp/cifar10_ddpmpp_continuous": {
        "model.fir": False, "model.progressive_input": "none", "model.embedding_type": "positional",
        "model.scale_by_sigma": False, "model.ema_rate": 0.9999, "data.centered": True,
        "training.reduce_mean": True, "sampling.predictor": "euler_maruyama", "sampling.corrector": "none"},
    "vp/cifar10_ddpmpp": {"training.continuous": False, "sampling.predictor": "ancestral_sampling"},
    "vp/cifar10_ncsnpp": {"sampling.predictor": "reverse_diffusion", "model.fir": True},
    "subvp/cifar10_ddpmpp_deep_continuous": {"training.sde": "subvpsde", "model.num_res_blocks": 8,
                                             "training.n_iters": 950001},
    "vp/ddpm/cifar10_unconditional": {"model.conditional": False, "model.num_res_blocks": 2},
    "vp/ddpm/bedroom": {"model.ch_mult": (1, 1, 2, 2, 4, 4), "optim.lr": 2e-5, "data.category": "bedroom",
                        "model.num_scales": 1000, "training.batch_size": 64},
    "vp/ddpm/celebahq": {"data.image_size": 256, "data.dataset": "CelebAHQ"},
    "ve/ncsn/cifar10": {"model.sigma_max": 1, "model.num_scales": 10, "sampling.n_steps_each": 100,
                        "sampling.snr": 0.316, "model.ema_rate": 0.0, "optim.lr": 1e-3, "optim.grad_clip": -1.0,
                        "optim.warmup": 0, "model.normalization": "InstanceNorm++", "model.nonlinearity": "elu"},
    "ve/ncsn/cifar10_124": {"model.num_scales": 232, "sampling.snr": 0.176, "sampling.n_steps_each": 5},
    "ve/ncsn/celeba_1245": {"model.num_scales": 500, "sampling.snr": 0.128, "model.ema_rate": 0.999},
    "ve/ncsnv2/cifar10": {"model.name": "ncsnv2_64", "model.num_scales": 232, "optim.lr": 1e-4},
    "ve/ncsnv2/bedroom": {"model.name": "ncsnv2_128", "model.sigma_max": 190, "model.num_scales": 1086,
                          "data.image_size": 128, "training.batch_size": 128, "sampling.n_steps_each": 3,
                          "sampling.snr": 0.095, "training.continuous": False},
}

# The official configs the parity fixtures were made from, and the README's shrink of them.
FIXTURE_CONFIGS = {"ddpmpp_vp_continuous": ("vp/cifar10_ddpmpp_continuous", 317_699, 212),
                   "ncsnpp_ve_continuous": ("ve/cifar10_ncsnpp_continuous", 323_827, 217)}
FIXTURE_SHRINK = {"data.image_size": 16, "training.batch_size": 3, "eval.batch_size": 3, "model.nf": 16,
                  "model.ch_mult": (1, 2, 2), "model.num_res_blocks": 1, "model.attn_resolutions": (8,), "seed": 42}

# Ho et al. (2020), Appendix B: 35.7M parameters on CIFAR-10, 114M on LSUN / CelebA-HQ 256, with the
# channel count at the attention resolution 16. The official score_sde DDPM attends once per level on
# the way up where the original attends after each of the 3 blocks: 2 attention blocks fewer.
DDPM_PAPER_COUNTS = {"vp/ddpm/cifar10": (35.7e6, 256), "vp/ddpm/bedroom": (114e6, 512)}


def attn_block_params(channels: int) -> int:
    """GroupNorm (scale, bias) and four NIN layers (weight, bias) of a DDPM attention block."""
    return 2 * channels + 4 * (channels * channels + channels)

PARAM_COUNTS: dict[str, int] = {}


def load(name: str) -> ml_collections.ConfigDict:
    return importlib.import_module("configs." + name.replace("/", ".")).get_config()


def get(config: ml_collections.ConfigDict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def test_all_official_configs_present():
    # The complete list of the official score_sde configs (39 files) plus 3 digits configs, the
    # folder config and the two EDM configs.
    assert len(CONFIGS) == 45, CONFIGS
    assert {"ve/ncsn/celeba_5", "ve/ncsnv2/bedroom", "vp/ddpm/church", "subvp/cifar10_ddpm_continuous",
            "vp/digits_ddpmpp_continuous", "ve/digits_ncsnpp_continuous",
            "subvp/digits_ddpmpp_continuous", "vp/folder_ddpmpp_continuous", "edm/digits_ddpmpp",
            "edm/cifar10_ddpmpp"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_loads_locked_with_additions(name: str):
    config = load(name)
    assert config.is_locked
    for section in ("training", "sampling", "eval", "data", "model", "optim"):
        with pytest.raises(AttributeError, match="locked"):
            config[section].n_iter = 5  # a misspelt field must not be silently added
    with pytest.raises(AttributeError, match="locked"):
        config.seeed = 1
    config.training.n_iters = 7  # existing fields stay overridable,
    config.model.sigma_max = 12.5  # fractional values included (the official sigma_max is an int)
    config.optim.weight_decay = 1e-4
    expected = {**ADDITIONS, **ADDITION_EXCEPTIONS.get(name, {})}
    for field, value in expected.items():
        assert get(config, field) == value and type(get(config, field)) is type(value), field
    assert config.training.nan_policy in ("stop", "skip")
    for field in ("training.sde", "training.continuous", "sampling.method", "model.name", "model.ema_rate",
                  "data.image_size", "data.num_channels", "optim.lr", "seed"):
        get(config, field)  # every config names what the runner needs


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_values(name: str):
    config = load(name)
    for field, value in OFFICIAL[name].items():
        assert get(config, field) == value, f"{name}: {field} = {get(config, field)!r}, official {value!r}"


@pytest.mark.parametrize("case", sorted(FIXTURE_CONFIGS))
def test_equals_official_config_of_fixture(case: str, fixtures_dir: pathlib.Path):
    """The whole config, shrunk as the fixture README says, equals the official one (additions aside)."""
    official = json.loads(str(np.load(fixtures_dir / f"{case}.npz")["config_json"]))
    config = load(FIXTURE_CONFIGS[case][0])
    ours = json.loads(config.to_json())
    for field, value in FIXTURE_SHRINK.items():
        *parents, leaf = field.split(".")
        section = ours
        for key in parents:
            section = section[key]
        section[leaf] = list(value) if isinstance(value, tuple) else value
    for field in ADDITIONS:
        section, leaf = field.split(".")
        del ours[section][leaf]
    ours = {name: section for name, section in ours.items() if section != {}}  # score_jax sections
    ours["training"]["n_jitted_steps"] = 5  # the official default, replaced by 0 = choose by backend
    assert ours == official


def test_digits_configs():
    vp, ve, subvp = (load(n) for n in ("vp/digits_ddpmpp_continuous", "ve/digits_ncsnpp_continuous",
                                       "subvp/digits_ddpmpp_continuous"))
    cifar = load("vp/cifar10_ddpmpp_continuous")
    assert (vp.data.dataset, vp.data.image_size, vp.data.num_channels) == ("digits", 8, 1)
    assert vp.data.random_flip is False and vp.data.centered is True
    model = vp.model
    assert (model.nf, model.ch_mult, model.num_res_blocks, model.attn_resolutions) == (24, (1, 2), 1, ())
    for flag in ("name", "fir", "progressive", "progressive_input", "embedding_type", "scale_by_sigma",
                 "resblock_type", "skip_rescale", "init_scale", "attention_type", "conditional"):
        assert vp.model[flag] == cifar.model[flag], flag  # the DDPM++ flags
    assert (vp.training.batch_size, vp.optim.lr, vp.optim.warmup, vp.training.n_iters) == (64, 1e-3, 100, 1400)
    assert (vp.model.ema_rate, vp.model.ema_warmup, vp.sampling.method) == (0.999, True, "heun")
    assert (vp.training.snapshot_freq, vp.training.snapshot_freq_for_preemption) == (700, 100)
    assert (vp.training.log_freq, vp.training.eval_freq) == (50, 100)
    assert (vp.eval.batch_size, vp.eval.num_samples) == (304, 608)
    assert vp.eval.batch_size % 8 == 0 and vp.eval.bpd_rtol == vp.eval.bpd_atol == 1e-3
    assert vp.eval.enable_bpd and vp.eval.enable_sampling
    # Checkpoints are numbered step // snapshot_freq: the quick start evaluates the last snapshot.
    last = vp.training.n_iters // vp.training.snapshot_freq
    assert vp.training.n_iters % vp.training.snapshot_freq == 0
    assert (vp.eval.begin_ckpt, vp.eval.end_ckpt) == (last, last)
    # The same but for the SDE and the sampler measured on the VP model (vp sets EDM's Heun).
    sampler = {"method": "ode", "nfe": 20, "s_churn": 0.0}
    assert subvp.training.sde == "subvpsde" and subvp.to_dict() == {
        **vp.to_dict(), "training": {**vp.training.to_dict(), "sde": "subvpsde"},
        "sampling": {**vp.sampling.to_dict(), **sampler}}
    # EDM: the VP default's network, optimiser and length; only the formulation and sampler differ.
    edm = load("edm/digits_ddpmpp")
    formulation = {"training": {"sde": "vesde", "loss": "edm"},
                   "model": {"sigma_min": 0.002, "sigma_max": 80.0, "preconditioning": "edm",
                             "sigma_data": 0.75},
                   "sampling": {"method": "heun", "nfe": 35, "s_churn": 0.0,
                                "predictor": "reverse_diffusion"}}
    assert edm.to_dict() == {**vp.to_dict(), **{k: {**vp[k].to_dict(), **v} for k, v in formulation.items()}}
    ve_ncsnpp = load("ve/cifar10_ncsnpp_continuous")
    assert ve.training.sde == "vesde" and ve.data.centered is False
    for flag in ("fir", "progressive_input", "embedding_type", "scale_by_sigma"):
        assert ve.model[flag] == ve_ncsnpp.model[flag], flag  # the NCSN++ flags


def _labels(config: ml_collections.ConfigDict) -> jax.Array:
    """Labels [1] of the kind the network is trained with: a time index or a sigma/time value."""
    if not config.training.continuous:
        return jnp.zeros((1,), jnp.int32)
    return jnp.ones((1,), jnp.float32)


_SHAPE_CACHE: dict = {}


def _shapes(model, config):
    """(output shape, param count) of one eval-mode forward at batch 1, traced only (no FLOPs)."""
    size, channels = config.data.image_size, config.data.num_channels
    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
              if f.name not in ("parent", "name")}
    # Sigma values change no shape: configs that differ only there share one trace.
    key = (type(model).__name__, size, channels, bool(config.training.continuous),
           tuple(sorted((k, repr(v)) for k, v in fields.items() if not k.startswith("sigma_"))))
    if key not in _SHAPE_CACHE:
        x = jnp.zeros((1, size, size, channels), jnp.float32)
        out, variables = jax.eval_shape(
            lambda k: model.init_with_output({"params": k, "dropout": k}, x, _labels(config), train=False),
            jax.random.PRNGKey(0))
        count = sum(int(np.prod(v.shape)) for v in jax.tree_util.tree_leaves(variables["params"]))
        _SHAPE_CACHE[key] = (out.shape, count)
    return _SHAPE_CACHE[key]


def _require_model(config: ml_collections.ConfigDict) -> None:
    if config.model.name not in registry.MODELS:
        pytest.skip(f"model {config.model.name!r} is not registered in score_jax.models.registry yet")


@pytest.mark.parametrize("name", CONFIGS)
def test_builds_model_and_forward_shape(name: str):
    config = load(name)
    _require_model(config)
    model = registry.get_model(config)
    out_shape, count = _shapes(model, config)
    size, channels = config.data.image_size, config.data.num_channels
    assert out_shape == (1, size, size, channels)
    PARAM_COUNTS[name] = count
    print(f"{name}: {count:,} parameters")
    if name in DDPM_PAPER_COUNTS:
        paper, channels = DDPM_PAPER_COUNTS[name]
        assert abs((count + 2 * attn_block_params(channels)) / paper - 1) < 0.005, count


def test_default_digits_real_forward():
    """main.py's default config runs for real: a finite eval-mode forward at batch 1.

    The parameters take init_model's tree with random values: compiling the init itself (threefry for
    every leaf) takes ~40 s on this CPU, and init parity is the model tests' business.
    """
    config = load("vp/digits_ddpmpp_continuous")
    _require_model(config)
    model = registry.get_model(config)
    shapes = jax.eval_shape(lambda k: registry.init_model(k, model, 8, 1), jax.random.PRNGKey(0))
    rng = np.random.RandomState(0)
    variables = jax.tree_util.tree_map(
        lambda s: (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 8, 8, 1))
    out = jax.jit(lambda v, x, t: model.apply(v, x, t, train=False))(variables, x, jnp.array([500.0]))
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out))) and float(jnp.abs(out).max()) > 0
    assert sum(v.size for v in jax.tree_util.tree_leaves(variables["params"])) == _shapes(model, config)[1]


@pytest.mark.parametrize("case", sorted(FIXTURE_CONFIGS))
def test_fixture_config_builds_official_tree(case: str, fixtures_dir: pathlib.Path):
    """The shrunk official config builds exactly the official parameter paths, shapes and count."""
    data = np.load(fixtures_dir / f"{case}.npz")
    name, count, leaves = FIXTURE_CONFIGS[case]
    config = load(name)
    with config.unlocked():
        for field, value in FIXTURE_SHRINK.items():
            *parents, leaf = field.split(".")
            section = config
            for key in parents:
                section = section[key]
            section[leaf] = value
    _require_model(config)
    variables = jax.eval_shape(lambda k: registry.init_model(k, registry.get_model(config), 16, 3),
                               jax.random.PRNGKey(0))
    flat = {"/".join(str(getattr(p, "key", p)) for p in path): leaf.shape
            for path, leaf in jax.tree_util.tree_flatten_with_path(variables["params"])[0]}
    official = {k[len("params/"):]: data[k].shape for k in data.files if k.startswith("params/")}
    assert flat == official
    assert len(flat) == leaves and sum(int(np.prod(s)) for s in flat.values()) == count


def test_unipc_options_in_the_config_reach_the_solver_and_bad_ones_fail_before_training():
    from score_jax import experiment, fast_sampling
    from score_jax.errors import InvalidInputError

    config = load("vp/digits_ddpmpp_continuous")
    config.sampling.method, config.sampling.nfe = "unipc", 6
    sde, eps = experiment.get_sde(config)
    grid = tuple(float(t) for t in np.linspace(1.0, eps, 6) ** 1.5)  # nfe - 1 + 1 times, T to eps
    grid = grid[:-1] + (eps,)
    config.sampling.update(prediction="noise", unipc_variant="bh1", rho=3.0, grid=grid)
    assert experiment.fast_options(config) == {"prediction": "noise", "variant": "bh1", "rho": 3.0,
                                               "grid": grid}
    experiment.build(config)
    # The plan fast_sample runs is laid out on exactly the config's grid.
    plan = fast_sampling.build_plan(sde, "unipc", 6, eps, True, **experiment.fast_options(config))
    assert sorted({row[0] for row in plan.rows}, reverse=True) == list(grid)
    for fields, match in (({"prediction": "x0"}, "prediction"), ({"unipc_variant": "bh3"}, "variant"),
                          ({"grid": grid[:-1]}, "grid"), ({"grid": grid[::-1]}, "grid"),
                          ({"rho": -1.0}, "rho"), ({"grid": ("1.0", "late")}, "grid")):
        bad = load("vp/digits_ddpmpp_continuous")
        bad.sampling.update(method="unipc", nfe=6, **fields)
        with pytest.raises(InvalidInputError, match=match):
            experiment.build(bad)
    # An unset field keeps the solver's default.
    assert experiment.fast_options(load("vp/digits_ddpmpp_continuous")) == {"s_churn": 10.0}

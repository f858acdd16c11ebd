"""Official score_sde checkpoint import, checked against the official fixture (official_ckpt_ddpmpp/)."""

import json
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from score_jax import official_checkpoint as oc
from score_jax.models import registry


@pytest.fixture(scope="module")
def ckpt_dir(fixtures_dir: pathlib.Path) -> pathlib.Path:
    return fixtures_dir / "official_ckpt_ddpmpp"


@pytest.fixture(scope="module")
def case(fixtures_dir: pathlib.Path) -> dict:
    """The ddpmpp_vp_continuous init fixture: official params (by path) and config."""
    data = np.load(fixtures_dir / "ddpmpp_vp_continuous.npz")
    params = {k[len("params/"):]: data[k] for k in data.files if k.startswith("params/")}
    return {"params": params, "config": json.loads(str(data["config_json"]))}


@pytest.fixture(scope="module")
def ckpt(ckpt_dir: pathlib.Path) -> oc.OfficialCheckpoint:
    return oc.load_official_checkpoint(ckpt_dir)


@pytest.fixture(scope="module")
def model_and_template(case: dict):
    """The ncsnpp model of the fixture's config and its parameter template (shapes only)."""
    config = ml_collections.ConfigDict(case["config"])
    model = registry.get_model(config)
    size, channels = config.data.image_size, config.data.num_channels
    variables = jax.eval_shape(lambda key: registry.init_model(key, model, size, channels),
                               jax.random.PRNGKey(0))
    return model, variables["params"]


def test_scalars_and_layout(ckpt: oc.OfficialCheckpoint, ckpt_dir: pathlib.Path):
    layout = json.loads((ckpt_dir / "layout.json").read_text())
    assert ckpt.step == 7 and ckpt.optimizer_step == 7
    assert ckpt.lr == float(np.float32(2e-4)) and ckpt.ema_rate == float(np.float32(0.9999))
    np.testing.assert_array_equal(ckpt.rng, np.array([0, 3], np.uint32))
    assert ckpt.rng.dtype == np.uint32 and ckpt.model_state == {}
    assert sorted(oc.flatten_tree(ckpt.params)) == sorted(layout["PARAMS_leaf_paths"])


def test_params_equal_official_leaves(ckpt: oc.OfficialCheckpoint, case: dict):
    flat = oc.flatten_tree(ckpt.params)
    assert sorted(flat) == sorted(case["params"])
    for path, want in case["params"].items():
        assert flat[path].dtype == want.dtype, path
        np.testing.assert_array_equal(flat[path], want, err_msg=path)
    assert sum(v.size for v in flat.values()) == 317_699  # README: 317,699 in 212 leaves


def test_params_ema_and_adam_moments(ckpt: oc.OfficialCheckpoint):
    params, ema = oc.flatten_tree(ckpt.params), oc.flatten_tree(ckpt.params_ema)
    mu, nu = oc.flatten_tree(ckpt.adam_mu), oc.flatten_tree(ckpt.adam_nu)
    assert sorted(ema) == sorted(mu) == sorted(nu) == sorted(params)
    for path, p in params.items():
        np.testing.assert_allclose(ema[path], p + np.float32(0.001), rtol=0, atol=1e-7, err_msg=path)
        assert mu[path].shape == nu[path].shape == p.shape, path
    # The fixture's moments: grad_ema = 1e-3 N(0, 1), grad_sq_ema = 1e-6 U(0, 1).
    all_mu = np.concatenate([v.ravel() for v in mu.values()])
    all_nu = np.concatenate([v.ravel() for v in nu.values()])
    assert abs(all_mu.std() / 1e-3 - 1) < 0.01 and abs(all_mu.mean()) < 1e-5
    assert all_nu.min() >= 0 and all_nu.max() <= 1e-6 and abs(all_nu.mean() / 0.5e-6 - 1) < 0.01


def test_forward_reproduces_official_outputs(ckpt, model_and_template, ckpt_dir: pathlib.Path):
    model, _ = model_and_template
    expected = np.load(ckpt_dir / "expected_outputs.npz")
    forward = jax.jit(lambda p, x, y: model.apply({"params": p}, x, y, train=False))
    x, labels = jnp.asarray(expected["x"]), jnp.asarray(expected["labels"])
    for params, key in ((ckpt.params, "output_target"), (ckpt.params_ema, "output_params_ema")):
        out, ref = np.asarray(forward(params, x, labels)), expected[key]
        assert out.shape == ref.shape
        rel = np.abs(out - ref).max() / np.abs(ref).max()
        assert rel < 1e-5, f"{key}: max|diff| / max|ref| = {rel:.2e}"


def test_matching_template_passes(ckpt_dir: pathlib.Path, model_and_template):
    _, template = model_and_template
    loaded = oc.load_official_checkpoint(ckpt_dir / "checkpoint_26", params_template=template)
    assert loaded.step == 7


def _with_leaf(tree, path: str, value):
    """Copy of a nested dict with the leaf at '/'-path replaced (value None deletes it)."""
    head, _, rest = path.partition("/")
    out = dict(tree)
    if rest:
        out[head] = _with_leaf(tree.get(head, {}), rest, value)
    elif value is None:
        del out[head]
    else:
        out[head] = value
    return out


def test_wrong_shape_names_first_sorted_path(ckpt_dir: pathlib.Path, model_and_template):
    _, template = model_and_template
    bad = jax.ShapeDtypeStruct((7, 7), jnp.float32)
    # Two wrong leaves: the error names the one first in sorted path order, with both shapes.
    template = _with_leaf(template, "Dense_1/kernel", bad)
    template = _with_leaf(template, "AttnBlockpp_1/NIN_2/W", bad)
    with pytest.raises(ValueError) as err:
        oc.load_official_checkpoint(ckpt_dir, params_template=template)
    msg = str(err.value)
    assert "'AttnBlockpp_1/NIN_2/W'" in msg and "Dense_1" not in msg
    assert "(7, 7)" in msg and re.search(r"\(\d+, \d+\)", msg.replace("(7, 7)", "")), msg
    assert "1 more" in msg


def test_missing_and_extra_paths_are_named(ckpt_dir: pathlib.Path, model_and_template):
    _, template = model_and_template
    extra = _with_leaf(template, "Zzz/extra", jax.ShapeDtypeStruct((2,), jnp.float32))
    with pytest.raises(ValueError, match=r"lacks 'Zzz/extra' \(shape \(2,\) in the model's parameters\)"):
        oc.load_official_checkpoint(ckpt_dir, params_template=extra)
    with pytest.raises(ValueError, match=r"has 'Conv_1/bias' \(shape \(3,\)\), which the model's param"):
        oc.load_official_checkpoint(ckpt_dir, params_template=_with_leaf(template, "Conv_1/bias", None))


def test_truncated_garbage_and_missing_files(ckpt_dir: pathlib.Path, tmp_path: pathlib.Path):
    data = (ckpt_dir / "checkpoint_26").read_bytes()
    (tmp_path / "truncated").write_bytes(data[: len(data) // 3])
    (tmp_path / "garbage").write_bytes(b"not a checkpoint" * 10)
    for name in ("truncated", "garbage"):
        with pytest.raises(ValueError, match="not a valid msgpack checkpoint") as err:
            oc.load_official_checkpoint(tmp_path / name)
        assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        oc.load_official_checkpoint(tmp_path / "checkpoint_99")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="checkpoint_<N>"):
        oc.load_official_checkpoint(tmp_path / "empty_dir")


def test_directory_picks_largest_step_numerically(ckpt_dir: pathlib.Path, tmp_path: pathlib.Path):
    # "checkpoint_4" sorts after "checkpoint_30" as text; flax picks 30 and so must we.
    shutil.copy(ckpt_dir / "checkpoint_26", tmp_path / "checkpoint_30")
    (tmp_path / "checkpoint_4").write_bytes(b"garbage")
    (tmp_path / "checkpoint_100.tmp").write_bytes(b"garbage")  # an unfinished write, not a checkpoint
    assert oc.latest_checkpoint_file(tmp_path).name == "checkpoint_30"
    assert oc.load_official_checkpoint(tmp_path).step == 7


def test_not_a_state_dict(tmp_path: pathlib.Path):
    from flax import serialization
    (tmp_path / "checkpoint_1").write_bytes(serialization.msgpack_serialize({"step": np.int32(1)}))
    with pytest.raises(ValueError, match=r"the state dict lacks 'optimizer'"):
        oc.load_official_checkpoint(tmp_path / "checkpoint_1")

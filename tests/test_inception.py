"""FID Inception: parity with pytorch-fid on seeded weights, torch-exact resizing, weight files."""

import io
import json
import pathlib
import pickle
import sys
import types
import zipfile

import jax
import numpy as np
import pytest

from score_jax.errors import InvalidInputError, MissingFileError
from score_jax.metrics import inception
from score_jax.metrics import inception_weights as iw

REF = pathlib.Path(__file__).resolve().parent / "fixtures" / "fid_inception_reference"


def seeded_state_dict() -> dict:
    """pytorch-fid's state dict with the README's seeded weights (numpy, sorted keys, one rng)."""
    shapes = json.loads((REF / "state_dict_shapes.json").read_text())
    rng = np.random.default_rng(2015)
    state = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        if key.endswith("num_batches_tracked"):
            state[key] = np.zeros(shape, np.int64)
            continue
        if key.endswith("conv.weight"):
            value = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
        elif key.endswith("bn.weight"):
            value = 1 + 0.1 * rng.standard_normal(shape)
        elif key.endswith(("bn.bias", "bn.running_mean")):
            value = 0.1 * rng.standard_normal(shape)
        elif key.endswith("bn.running_var"):
            value = 1 + 0.5 * rng.random(shape)
        elif key == "fc.weight":
            value = rng.normal(0, 0.01, shape)
        elif key == "fc.bias":
            value = np.zeros(shape)
        else:
            raise KeyError(key)
        state[key] = value.astype(np.float32)
    return state


@pytest.fixture(scope="module")
def state_dict() -> dict:
    return seeded_state_dict()


@pytest.fixture(scope="module")
def variables(state_dict) -> dict:
    return iw.convert_state_dict(state_dict)


@pytest.fixture(scope="module")
def reference() -> dict:
    with np.load(REF / "fid_inception_reference.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def outputs(variables, reference) -> inception.InceptionOutput:
    """The port's outputs on the fixture images (compiled once for the module)."""
    return inception.make_inception_fn(variables)(reference["images"])


@pytest.mark.parametrize("name", ["pool_3", "logits"])
def test_matches_pytorch_fid(outputs, reference, name):
    got, want = np.asarray(getattr(outputs, name)), reference[name]
    assert got.shape == want.shape
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < 1e-4, rel


def test_grey_images_are_repeated_to_rgb():
    grey = np.random.default_rng(0).integers(0, 256, (2, 9, 11, 1), dtype=np.uint8)
    rgb = np.repeat(grey, 3, axis=-1)
    np.testing.assert_array_equal(inception.preprocess(grey, 17), inception.preprocess(rgb, 17))


@pytest.mark.parametrize("n_in", [8, 32, 64, 300, 512])
def test_bilinear_matrix_equals_torch_interpolate(n_in):
    # torch F.interpolate(eye(n_in), (299, n_in), bilinear, align_corners=False): the matrix.
    with np.load(REF / "torch_bilinear_matrices.npz") as data:
        want = data[f"rows_{n_in}"]
    np.testing.assert_allclose(inception.bilinear_matrix(n_in, 299), want, atol=1e-6)


def test_upsampling_equals_jax_image_resize():
    x = np.random.default_rng(1).random((1, 32, 20, 3)).astype(np.float32)
    want = jax.image.resize(x, (1, 299, 299, 3), "linear", antialias=False)
    got = np.einsum("ih,nhwc,jw->nijc", inception.bilinear_matrix(32, 299), x,
                    inception.bilinear_matrix(20, 299))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_rejects_float_images(variables):
    with pytest.raises(InvalidInputError, match="uint8"):
        inception.make_inception_fn(variables)(np.zeros((1, 8, 8, 3), np.float32))


# ------------------------------------------------------------------ weight files

def test_reads_torch_written_files():
    # Written by torch 2.13's torch.save (zip and legacy layouts) from known tensors.
    for name in ("torch_small_state_dict_zip.pth", "torch_small_state_dict_legacy.pth"):
        got = iw.load_pth(REF / name)
        np.testing.assert_array_equal(got["a.conv.weight"],
                                      np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2))
        np.testing.assert_array_equal(got["b"], np.arange(12.0).reshape(3, 4).T)
        assert got["b"].dtype == np.float64
        assert got["c.num_batches_tracked"].shape == () and got["c.num_batches_tracked"] == 7
        np.testing.assert_array_equal(got["d"], np.ones(3, np.float32))
        np.testing.assert_array_equal(got["e"], [4.0, 5.0, 6.0])
        np.testing.assert_array_equal(got["f"], [0.0, 1.0])


def _fake_torch(monkeypatch) -> types.SimpleNamespace:
    """Stand-ins for the torch globals a state-dict pickle names, so it can be written without
    torch (pickle writes a global by module and name and checks that it resolves)."""
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    storages = {}
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch_mod, name, cls)
        storages[name] = cls
    torch_mod._utils = utils_mod
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)
    return types.SimpleNamespace(rebuild=_rebuild_tensor_v2, storages=storages)


def write_torch_zip(path: pathlib.Path, state: dict, monkeypatch) -> None:
    """A state dict in torch's zip layout: archive/data.pkl, archive/data/<key>, archive/version.

    Each tensor is `_rebuild_tensor_v2(storage, 0, shape, contiguous strides, False, {})`,
    its storage the persistent id ('storage', torch.<Type>Storage, key, 'cpu', numel).
    """
    fake = _fake_torch(monkeypatch)
    blobs = {}

    class Tensor:
        def __init__(self, key, array):
            self.key, self.array = key, array

        def __reduce__(self):
            strides = tuple(s // self.array.itemsize for s in self.array.strides)
            return fake.rebuild, (StorageRef(self.key, self.array), 0, self.array.shape,
                                  strides, False, {})

    class StorageRef:
        def __init__(self, key, array):
            self.key, self.array = key, array

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, StorageRef):
                kind = "LongStorage" if obj.array.dtype == np.int64 else "FloatStorage"
                blobs[obj.key] = obj.array.tobytes()
                return ("storage", fake.storages[kind], obj.key, "cpu", obj.array.size)
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(
        {k: Tensor(str(i), np.array(v, order="C")) for i, (k, v) in enumerate(state.items())})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        for key, blob in blobs.items():
            archive.writestr(f"archive/data/{key}", blob)
        archive.writestr("archive/version", "3\n")


def _assert_same_tree(a, b):
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(flat_a) == len(flat_b)
    for key, value in flat_a:
        np.testing.assert_array_equal(value, flat_b[key])


def test_pth_zip_round_trip(tmp_path, state_dict, variables, monkeypatch):
    path = tmp_path / iw.PTH_NAME
    write_torch_zip(path, state_dict, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.delitem(sys.modules, "torch._utils")
    raw = iw.load_pth(path)
    assert raw.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert raw[key].shape == value.shape and raw[key].dtype == value.dtype
        np.testing.assert_array_equal(raw[key], value)
    _assert_same_tree(iw.load_inception_params(path), variables)
    try:
        import torch
    except ImportError:
        return  # torch is not a dependency; checked where it is installed
    loaded = torch.load(path, weights_only=True)
    np.testing.assert_array_equal(loaded["fc.weight"].numpy(), state_dict["fc.weight"])


def test_npz_state_dict(tmp_path, state_dict, variables):
    path = tmp_path / "inception.npz"
    np.savez(path, **state_dict)
    _assert_same_tree(iw.load_inception_params(path), variables)


def test_jax_port_pickle(tmp_path, state_dict, variables):
    # The jax-fid / fidjax layout: nested modules, HWIO kernels, bn stats beside the params.
    tree: dict = {}
    for key, value in state_dict.items():
        *scopes, layer, leaf = key.split(".")
        if key.startswith("AuxLogits") or leaf == "num_batches_tracked":
            continue
        node = tree
        for scope in scopes:
            node = node.setdefault(scope, {})
        if layer == "fc":
            node.setdefault("fc", {})["kernel" if leaf == "weight" else "bias"] = (
                value.T if leaf == "weight" else value)
        elif layer == "conv":
            node.setdefault("conv", {})["kernel"] = value.transpose(2, 3, 1, 0)
        else:
            names = {"weight": "scale", "bias": "bias", "running_mean": "mean",
                     "running_var": "var"}
            node.setdefault("bn", {})[names[leaf]] = value
    path = tmp_path / iw.PICKLE_NAME
    path.write_bytes(pickle.dumps(tree))
    _assert_same_tree(iw.load_inception_params(path), variables)


def test_missing_file_names_the_config_field_and_sources(tmp_path):
    with pytest.raises(MissingFileError) as err:
        iw.load_inception_params(tmp_path / "nothing.pth")
    for text in ("eval.inception_weights", iw.PTH_NAME, iw.PTH_URL, iw.PICKLE_NAME):
        assert text in str(err.value)


def test_wrong_state_dict_is_refused(tmp_path, state_dict):
    path = tmp_path / "bad.npz"
    bad = dict(state_dict)
    del bad["Mixed_7c.branch_pool.conv.weight"]
    bad["fc.weight"] = np.zeros((1000, 2048), np.float32)
    np.savez(path, **bad)
    with pytest.raises(InvalidInputError, match="missing.*wrong shape"):
        iw.load_inception_params(path)


def test_foreign_globals_are_not_unpickled(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled",))

    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"fc": Evil()}))
    with pytest.raises(InvalidInputError, match="builtins.print"):
        iw.load_inception_params(path)

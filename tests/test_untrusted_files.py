"""Files from strangers: crafted pickles never run code; damaged files end in one UserError.

Every reader of a user-given path is fed (a) files whose unpickling would create a marker file
(reduce to os.system, builtins.exec, subprocess.Popen, numpy.save, shutil.copyfile) and (b) a
seeded fuzz of valid files (truncations at random offsets, random byte flips). The marker must never
appear; each read must end in a UserError or a well-formed result, never another exception or a hang.
"""

import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import zipfile

import ml_collections
import msgpack
import numpy as np
import pytest
from flax import serialization
from PIL import Image

from conftest import main_cmd, main_env
from test_inception import _fake_torch
from score_jax import official_checkpoint, safe_files, sample
from score_jax.errors import UserError
from score_jax.metrics import digits_net, fid
from score_jax.metrics import inception_weights as iw
from score_jax.models import classifier

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TORCH_ZIP = os.path.join(FIXTURES, "fid_inception_reference", "torch_small_state_dict_zip.pth")
TORCH_LEGACY = os.path.join(FIXTURES, "fid_inception_reference", "torch_small_state_dict_legacy.pth")


class _Call:
    """Pickles as `fn(*args)`: what a hostile file asks the unpickler to run."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker) -> dict:
    """One hostile object per way of running code; each would create `marker` when unpickled."""
    m = str(marker)
    return {
        "os.system": _Call(os.system, (f"touch {m}",)),
        "builtins.exec": _Call(exec, (f"open({m!r}, 'w').close()",)),
        "subprocess.run": _Call(subprocess.run, (["touch", m],)),
        "subprocess.Popen": _Call(subprocess.Popen, (["touch", m],)),
        "numpy.save (expected module, unexpected name)": _Call(np.save, (m, np.zeros(1))),
        "shutil.copyfile (unexpected module)": _Call(shutil.copyfile, (TORCH_ZIP, m)),
    }


def _ran(marker) -> bool:
    """Whether a payload ran: its marker exists (np.save adds .npy); Popen gets a moment to finish."""
    import time
    time.sleep(0.01)
    return os.path.exists(marker) or os.path.exists(str(marker) + ".npy")


def test_the_payloads_do_run_under_a_plain_unpickler(tmp_path):
    # Without this the tests below could pass with payloads that never did anything.
    for i, name in enumerate(payloads(tmp_path / "probe")):
        marker = tmp_path / f"probe{i}"
        data = pickle.dumps(payloads(marker)[name])
        result = pickle.loads(data)  # noqa: S301 - the point of this check
        if isinstance(result, subprocess.Popen):
            result.wait()
        assert _ran(marker), name


# ------------------------------------------------------------------ crafted files, per format


def _legacy_records(*records: bytes) -> bytes:
    return b"".join(records)


def _p(obj) -> bytes:
    return pickle.dumps(obj, protocol=2)


LEGACY_HEADER = [_p(iw._LEGACY_MAGIC), _p(1001), _p({"protocol_version": 1001,
                                                    "little_endian": True})]


def crafted_files(tmp_path, payload) -> dict:
    """{description: (path, reader)}: files whose reading would unpickle `payload`."""
    out = {}

    def put(name, data: bytes):
        path = tmp_path / name
        path.write_bytes(data)
        return path

    weights = iw.load_inception_params
    out["pth legacy: the magic-number record"] = (put(iw.PTH_NAME, _p(payload)), weights)
    out["pth legacy: the system-info record"] = (
        put("sysinfo.pth", _legacy_records(*LEGACY_HEADER[:2], _p(payload))), weights)
    out["pth legacy: the state dict"] = (
        put("state.pth", _legacy_records(*LEGACY_HEADER, _p({"w": payload}))), weights)
    out["pth legacy: the storage-key list"] = (
        put("keys.pth", _legacy_records(*LEGACY_HEADER, _p({}), _p(payload))), weights)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("archive/data.pkl", _p({"w": payload}))
        archive.writestr("archive/version", "3\n")
    out["pth zip: data.pkl"] = (put("zip.pth", zipped.getvalue()), weights)
    out["JAX ports' pickle"] = (put(iw.PICKLE_NAME, _p({"fc": {"kernel": payload}})), weights)

    def npz(name, key):
        path = tmp_path / name
        np.savez(path, **{key: np.array([payload, 1], dtype=object)})
        return path

    out["Inception .npz with an object array"] = (npz("weights.npz", "fc.weight"), weights)
    out["reference statistics .npz"] = (npz("stats.npz", "pool_3"), fid.load_reference_stats)
    out["digits classifier .npz"] = (npz("digits.npz", "Dense_0/kernel"), digits_net.load_params)
    out["--mode sample input .npz"] = (npz("input.npz", "images"), sample.read_images)
    mask = npz("mask.npz", "mask")
    out["--mode sample mask .npz"] = (mask, lambda p: sample._mask(
        ml_collections.ConfigDict({"sample": {"mask": str(p), "mask_fraction": 0.5}}),
        (1, 8, 8, 1), None))
    # flax msgpack: an ndarray ext claiming dtype 'O' with the pickle as its buffer.
    ext = msgpack.ExtType(1, msgpack.packb(((2,), "O", _p(payload))))
    tree = msgpack.packb({"params": {"w": ext}})
    out["official checkpoint (msgpack)"] = (put("checkpoint_1", tree),
                                            official_checkpoint.load_official_checkpoint)
    out["classifier checkpoint (msgpack)"] = (put("clf_1", tree), lambda p: (
        classifier.load_official_classifier(p, {"w": np.zeros(2)})))
    return out


@pytest.mark.parametrize("kind", list(payloads("m")))
def test_crafted_files_are_refused_and_run_nothing(tmp_path, kind):
    marker = tmp_path / "ran"
    for what, (path, read) in crafted_files(tmp_path, payloads(marker)[kind]).items():
        with pytest.raises(UserError) as err:
            read(path)
        assert str(path) in str(err.value) or path.name in str(err.value), what
        assert "\n" not in str(err.value), what
        assert not _ran(marker), f"{kind} ran while reading {what}"


def write_torch_legacy(path, tensors: dict, monkeypatch) -> None:
    """A state dict in torch's pre-1.6 stream layout; tensors {name: (storage array, offset, size,
    stride)}, each storage written after the pickle as an int64 count and its raw bytes."""
    fake = _fake_torch(monkeypatch)

    class StorageRef:
        def __init__(self, key):
            self.key = key

    class Tensor:
        def __init__(self, key, offset, size, stride):
            self.args = StorageRef(key), offset, size, stride

        def __reduce__(self):
            return fake.rebuild, self.args

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, StorageRef):
                return ("storage", fake.storages["FloatStorage"], obj.key, "cpu",
                        tensors[obj.key][0].size)
            return None

    body = io.BytesIO()
    Pickler(body, protocol=2).dump({k: Tensor(k, *v[1:]) for k, v in tensors.items()})
    storages = b"".join(np.int64(v[0].size).tobytes() + v[0].astype("<f4").tobytes()
                        for v in tensors.values())
    path.write_bytes(b"".join(LEGACY_HEADER) + body.getvalue() + _p(list(tensors)) + storages)


def test_torch_view_outside_its_storage_is_refused(tmp_path, monkeypatch):
    # as_strided does not check bounds: 10 elements at stride 1000 of a 4-element storage would
    # read memory outside it.
    storage = np.arange(4, dtype=np.float32)
    path = tmp_path / "view.pth"
    write_torch_legacy(path, {"w": (storage, 0, (10,), (1000,))}, monkeypatch)
    with pytest.raises(safe_files.DamagedFileError, match="past the storage"):
        iw.load_pth(path)
    write_torch_legacy(path, {"w": (storage, -2, (2,), (1,))}, monkeypatch)
    with pytest.raises(safe_files.DamagedFileError, match="invalid view"):
        iw.load_pth(path)
    # In-bounds views of the same storage load as torch rebuilds them: the refusal is the bounds.
    write_torch_legacy(path, {"w": (storage, 1, (2, 2), (0, 2))}, monkeypatch)
    np.testing.assert_array_equal(iw.load_pth(path)["w"], [[1, 3], [1, 3]])


def test_main_refuses_a_hostile_weights_file_in_one_line(tmp_path):
    marker = tmp_path / "ran"
    odd = tmp_path / "a dir with 'quotes' and spaces"  # paths that need quoting in a shell
    odd.mkdir()
    weights = odd / iw.PTH_NAME
    weights.write_bytes(_p(payloads(marker)["os.system"]))
    workdir = odd / "work dir"
    proc = subprocess.run(
        main_cmd("--workdir", str(workdir), "--mode", "fid_stats",
                 "--config.eval.sample_metrics=('fid',)",
                 f"--config.eval.inception_weights={weights}"),
        env=main_env(tmp_path), capture_output=True, text=True, timeout=300)
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert proc.returncode == 2, proc.stderr
    assert lines[-1].startswith("error: ") and "posix.system" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not _ran(marker)
    assert not workdir.exists()


# ------------------------------------------------------------------ fuzz of valid files


def _small_tree(rng) -> dict:
    return {"a": rng.standard_normal((3, 4)).astype(np.float32),
            "b": {"c": np.arange(5, dtype=np.int64), "d": np.float32(rng.standard_normal())}}


def _is_numeric_dict(result) -> bool:
    return isinstance(result, dict) and all(
        isinstance(v, (np.ndarray, np.generic, dict)) for v in result.values())


FORMATS = ["pth zip (torch-written)", "pth legacy (torch-written)", "JAX ports' pickle", "npz",
           "npz compressed", "reference statistics", "flax msgpack", "PNG",
           "checkpoint metadata (JSON)"]


def _valid_files() -> dict:
    """{format: (valid bytes, reader(path), check(result) -> bool)}."""
    rng = np.random.default_rng(0)
    out = {}
    out["pth zip (torch-written)"] = (open(TORCH_ZIP, "rb").read(), iw.load_pth, _is_numeric_dict)
    out["pth legacy (torch-written)"] = (open(TORCH_LEGACY, "rb").read(), iw.load_pth,
                                         _is_numeric_dict)
    out["JAX ports' pickle"] = (_p(_small_tree(rng)), iw.load_port_pickle, _is_numeric_dict)
    for name, save in (("npz", np.savez), ("npz compressed", np.savez_compressed)):
        buffer = io.BytesIO()
        save(buffer, x=rng.standard_normal((4, 3)), y=np.arange(7, dtype=np.uint8))
        out[name] = (buffer.getvalue(), lambda p: safe_files.load_npz(p, "test file"),
                     _is_numeric_dict)
    buffer = io.BytesIO()
    feats = rng.standard_normal((6, 3))
    np.savez(buffer, pool_3=feats, mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    out["reference statistics"] = (buffer.getvalue(), fid.load_reference_stats,
                                   lambda r: r.mu.shape == (3,) and r.sigma.shape == (3, 3))
    out["flax msgpack"] = (serialization.msgpack_serialize(_small_tree(rng)),
                           lambda p: safe_files.read_msgpack(p, "test file"),
                           lambda r: isinstance(r, dict))
    png = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(png, "PNG")
    out["PNG"] = (png.getvalue(), lambda p: safe_files.open_image(p, "test image"),
                  lambda r: r.dtype == np.uint8 and r.ndim in (2, 3))
    out["checkpoint metadata (JSON)"] = (
        json.dumps({"step": 3, "data": {"step": 3, "seed": 1}}).encode(),
        lambda p: _read_json(p), lambda r: True)
    return out


def _read_json(path):
    with safe_files.reading(path, "checkpoint metadata"):
        return json.loads(open(path, "rb").read())


class _Hang(Exception):
    pass


def _alarm(*_):
    raise _Hang


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_files_end_in_a_user_error_or_a_correct_load(tmp_path, fmt):
    data, read, check = _valid_files()[fmt]
    original = _read_bytes(tmp_path, data, read)
    assert check(original), "the unfuzzed file must load"
    rng = np.random.default_rng(FORMATS.index(fmt))
    # (bytes, is a truncation). Of a proper prefix only a PNG can load (PIL stops at the end of
    # the compressed pixels), and then it must give the whole image.
    cases = [(data[:n], True) for n in rng.integers(0, len(data), 150)]
    for _ in range(150):
        flipped = bytearray(data)
        for i in rng.integers(0, len(data), int(rng.integers(1, 5))):
            flipped[i] ^= int(rng.integers(1, 256))
        cases.append((bytes(flipped), False))
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)  # a few seconds are expected; a minute means a read hangs
    outcomes = {"user error": 0, "load": 0}
    try:
        for case, truncated in cases:
            try:
                result = _read_bytes(tmp_path, case, read)
            except UserError as err:
                assert "\n" not in str(err)  # noqa: PT017 - hundreds of cases, one loop
                outcomes["user error"] += 1
            else:
                if truncated:
                    assert fmt == "PNG" and np.array_equal(result, original), (
                        f"{fmt}: a file cut to {len(case)} of {len(data)} bytes loaded")
                assert check(result), f"{fmt}: a damaged file loaded as {type(result)}"
                outcomes["load"] += 1
    except _Hang:
        pytest.fail(f"{fmt}: a damaged file made the reader hang")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert outcomes["user error"] > 0 and outcomes["load"] + outcomes["user error"] == 300


def _read_bytes(tmp_path, data: bytes, read):
    path = tmp_path / "case"
    path.write_bytes(data)
    return read(path)


def test_sample_inputs_of_mixed_shapes_or_no_arrays_are_one_line(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "b.png")
    with pytest.raises(UserError, match="different shapes"):
        sample.read_images(str(folder))
    (folder / "b.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="b.png"):
        sample.read_images(str(folder))
    empty = tmp_path / "empty.npz"
    np.savez(empty)
    config = ml_collections.ConfigDict({"sample": {"mask": str(empty), "mask_fraction": 0.5}})
    with pytest.raises(UserError, match="holds no array"):
        sample._mask(config, (1, 8, 8, 1), None)

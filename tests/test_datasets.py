"""Input pipelines: digits build, errors, scalers, official preprocessing, resumable iterators.

Oracles: scikit-learn's digits and the documented seeded split, closed forms of crops and
antialiased resizes on gradient images, jax.image.resize (an independent port of TensorFlow's
scale-and-translate resize), and invariants (resume = uninterrupted, shards = global batch).
"""

import json
import pathlib
import subprocess
import sys
import struct

import jax
import numpy as np
import pytest
from sklearn.datasets import load_digits

from score_jax import datasets

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> pathlib.Path:
    """A data dir in which two processes build the digits data set at the same time."""
    data_dir = tmp_path_factory.mktemp("tfds")
    code = ("import sys; from score_jax import digits; b = digits.prepare(sys.argv[1]); "
            "print(len(b.as_data_source(split='train')))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data_dir)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        assert out.strip().splitlines()[-1] == "1500"
    return data_dir


def _sklearn_split(split: str) -> list[tuple[bytes, int]]:
    """Sorted (uint8 image bytes, label) of a split, from sklearn and the documented permutation."""
    d = load_digits()
    perm = np.random.default_rng(0).permutation(1797)
    idx = perm[:1500] if split == "train" else perm[1500:]
    images = np.round(d.images[idx] * 255 / 16).astype(np.uint8)[..., None]
    return sorted((im.tobytes(), int(t)) for im, t in zip(images, d.target[idx]))


def _as_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(image * 255).astype(np.uint8)


def test_digits_build_counts_levels_split(digits_dir):
    for split, n in (("train", 1500), ("test", 297)):
        source = datasets.open_source("digits", split, digits_dir)
        assert len(source) == n
        examples = [source[i] for i in range(n)]
        got = sorted((np.asarray(e["image"]).tobytes(), int(e["label"])) for e in examples)
        assert got == _sklearn_split(split)
    images = np.stack([np.asarray(e["image"]) for e in examples])
    assert images.shape == (297, 8, 8, 1) and images.dtype == np.uint8
    assert set(np.unique(images)) <= {round(v * 255 / 16) for v in range(17)}


def test_digits_second_open_reuses_files(digits_dir):
    version_dir = digits_dir / "digits" / "1.0.0"
    files = sorted(version_dir.iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    assert len(datasets.open_source("digits", "eval", digits_dir)) == 297
    assert sorted(version_dir.iterdir()) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert not [p for p in (digits_dir / "digits").iterdir() if p.name.startswith("incomplete")]


def test_missing_dataset_error_names_dir_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        datasets.open_source("cifar10", "train", tmp_path)
    assert isinstance(info.value, datasets.DatasetNotPreparedError)
    msg = str(info.value)
    assert str(tmp_path) in msg
    assert (f"tfds.builder('cifar10', data_dir='{tmp_path}')"
            ".download_and_prepare(file_format='array_record')") in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["cifar", "lsun", "celeba_hq", "lsun/"])
def test_unknown_name_lists_valid_names(name):
    with pytest.raises(ValueError, match="valid names: digits, cifar10, svhn_cropped"):
        datasets.open_source(name)


def test_unknown_lsun_category_lists_categories(tmp_path):
    with pytest.raises(ValueError, match="valid categories: .*church_outdoor"):
        datasets.open_source("lsun/church", data_dir=tmp_path)


def test_tfrecords_without_tensorflow(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import fails even where TF exists
    with pytest.raises(ImportError, match="pip install tensorflow"):
        datasets.open_source("ffhq", tfrecords_path=str(tmp_path / "x.tfrecords"))
    with pytest.raises(ValueError, match="tfrecords_path"):
        datasets.open_source("celebahq")


def test_record_offsets_reads_length_headers(tmp_path):
    payloads = [b"abc", b"", b"x" * 1000]
    path = tmp_path / "r.tfrecords"
    with open(path, "wb") as f:
        for p in payloads:
            f.write(struct.pack("<Q", len(p)) + b"\0" * 4 + p + b"\0" * 4)
    offsets = datasets.record_offsets(str(path))
    data = path.read_bytes()
    assert [data[o:o + n] for o, n in offsets] == payloads


@pytest.mark.parametrize("centered", [True, False])
def test_scaler_round_trip(centered):
    x = np.linspace(0.0, 1.0, 11, dtype=np.float32)
    y = datasets.get_data_scaler(centered)(x)
    np.testing.assert_allclose(y, 2 * x - 1 if centered else x, atol=1e-7)
    np.testing.assert_allclose(datasets.get_data_inverse_scaler(centered)(y), x, atol=1e-7)


def test_dequantization_stays_in_bin():
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    x = levels.astype(np.float32) * np.float32(1 / 255)  # as tf.image.convert_image_dtype
    for noise in (np.zeros_like(x), np.full_like(x, np.nextafter(np.float32(1), np.float32(0))),
                  np.random.default_rng(0).random(x.shape, np.float32)):
        y = datasets.dequantize(x, noise)
        assert y.dtype == np.float32
        np.testing.assert_array_equal(np.floor(y.astype(np.float64) * 256), levels)


def test_resize_matches_jax_image():
    x = np.random.default_rng(0).random((37, 23, 3)).astype(np.float32)
    for method in ("linear", "cubic"):
        for shape in ((16, 50), (37, 9)):  # shrink one axis, enlarge the other
            want = jax.jit(jax.image.resize, static_argnums=(1, 2))(x, shape + (3,), method)
            np.testing.assert_allclose(datasets.resize(x, *shape, method), want, atol=1e-5)


def _ramp(h: int, w: int) -> np.ndarray:
    """uint8 [h, w, 3]: channel 0 = row, channel 1 = column (clipped), channel 2 = 7."""
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([np.clip(rows, 0, 255), np.clip(cols, 0, 255), np.full_like(rows, 7)],
                    -1).astype(np.uint8)


def test_celeba_crop_window_and_resize():
    image = _ramp(218, 178)
    out = datasets.preprocess_image("celeba", image, 140)  # crop only: offset (39, 19)
    rows = np.broadcast_to(39 + np.arange(140)[:, None], (140, 140))
    np.testing.assert_allclose(out[..., 0] * 255, rows, atol=1e-4)
    np.testing.assert_allclose(out[..., 1] * 255, np.broadcast_to(19 + np.arange(140), (140, 140)),
                               atol=1e-4)
    out = datasets.preprocess_image("celeba", image, 70)  # 2x shrink: mean of a ramp window
    assert out.shape == (70, 70, 3)
    i = np.arange(1, 69)
    np.testing.assert_allclose(out[1:69, 5, 0] * 255, 39 + 2 * i + 0.5, atol=1e-3)
    np.testing.assert_allclose(out[5, 1:69, 1] * 255, 19 + 2 * i + 0.5, atol=1e-3)
    np.testing.assert_allclose(out[..., 2] * 255, np.full((70, 70), 7.0), atol=1e-3)


def test_lsun_crop_resize_bicubic_truncates():
    out = datasets.preprocess_image("lsun/bedroom", _ramp(300, 200), 100)  # crop rows 50..249
    i = np.arange(1, 99)
    # Keys cubic reproduces a ramp, so rows 50 + 2i + 0.5; the uint8 cast truncates the 0.5.
    np.testing.assert_array_equal(_as_uint8(out[1:99, 7, 0]), 50 + 2 * i)
    np.testing.assert_array_equal(_as_uint8(out[7, 1:99, 1]), 2 * i)


def test_lsun_128_resize_small_then_centre_crop():
    out = datasets.preprocess_image("lsun/bedroom", _ramp(256, 270), 128)  # 128 x 135, left 3
    assert out.shape == (128, 128, 3)
    i = np.arange(1, 122)  # source columns up to 2 * (3 + 121) + 2 = 250 < 255 (unclipped)
    np.testing.assert_allclose(out[1:122, 9, 0] * 255, 2 * i + 0.5, atol=1e-3)
    np.testing.assert_allclose(out[9, 1:122, 1] * 255, 2 * (3 + i) + 0.5, atol=1e-3)


def _iter(digits_dir, **kw):
    args = dict(data_dir=digits_dir, image_size=8, global_batch_size=400, seed=7,
                random_flip=True, uniform_dequantization=True, process_index=0, process_count=1)
    return datasets.train_iterator("digits", **{**args, **kw})


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys() == {"image", "label", "mask"}
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_train_resume_gives_same_batches(digits_dir):
    it = _iter(digits_dir)
    first = [next(it) for _ in range(2)]
    state = json.loads(json.dumps(it.get_state()))
    rest = [next(it) for _ in range(3)]  # crosses the epoch boundary at example 1500
    resumed = _iter(digits_dir, state=state, prefetch=2)
    for want in rest:
        _assert_batches_equal(next(resumed), want)
    resumed.close()
    b = first[0]
    assert b["image"].shape == (400, 8, 8, 1) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].all()
    assert 0 <= b["image"].min() and b["image"].max() < 1
    with pytest.raises(ValueError, match="seed"):
        _iter(digits_dir, seed=8, state=state)


def test_flip_only_mirrors(digits_dir):
    plain = next(_iter(digits_dir, random_flip=False, uniform_dequantization=False))
    flipped = next(_iter(digits_dir, uniform_dequantization=False))
    same = (flipped["image"] == plain["image"]).all(axis=(1, 2, 3))
    mirrored = (flipped["image"] == plain["image"][:, :, ::-1]).all(axis=(1, 2, 3))
    assert (same | mirrored).all()
    assert (mirrored & ~same).any() and (same & ~mirrored).any()
    np.testing.assert_array_equal(flipped["label"], plain["label"])


def test_two_processes_split_the_global_batch(digits_dir):
    single = _iter(digits_dir)
    parts = [_iter(digits_dir, process_index=p, process_count=2) for p in range(2)]
    for _ in range(4):  # batch 3 spans the epoch boundary
        whole, halves = next(single), [next(p) for p in parts]
        assert halves[0]["image"].shape == (200, 8, 8, 1)
        joined = {k: np.concatenate([h[k] for h in halves]) for k in whole}
        _assert_batches_equal(joined, whole)
    with pytest.raises(ValueError, match="global_batch_size"):
        _iter(digits_dir, global_batch_size=401, process_count=2)


def test_worker_processes_resume_and_shard_exactly(digits_dir):
    """With 2 worker processes, two hosts resumed at step 2 read exactly the halves of the global
    batches of one uninterrupted in-process iterator (the step-3 batch spans the epoch boundary)."""
    single = _iter(digits_dir)
    want = [next(single) for _ in range(6)][2:]
    state = json.loads(json.dumps({**single.get_state(), "step": 2}))
    parts = [_iter(digits_dir, process_index=p, process_count=2, state=state, workers=2)
             for p in range(2)]
    try:
        for whole in want:
            halves = [next(p) for p in parts]
            joined = {k: np.concatenate([h[k] for h in halves]) for k in whole}
            _assert_batches_equal(joined, whole)
    finally:
        for p in parts:
            p.close()
    with pytest.raises(ValueError, match="num_workers"):
        _iter(digits_dir, workers=-1)


def test_eval_covers_every_example_once(digits_dir):
    batches = [list(datasets.eval_iterator("digits", data_dir=digits_dir, image_size=8,
                                           global_batch_size=64, process_index=p, process_count=2))
               for p in range(2)]
    assert [len(b) for b in batches] == [5, 5]  # ceil(297 / 64)
    real = []
    for per_process in batches:
        for b in per_process:
            assert b["image"].shape == (32, 8, 8, 1) and b["mask"].shape == (32,)
            assert (b["image"][~b["mask"]] == 0).all()
            real += [(_as_uint8(im).tobytes(), int(t))
                     for im, t in zip(b["image"][b["mask"]], b["label"][b["mask"]])]
    assert len(real) == 297 and sorted(real) == _sklearn_split("test")


def test_fake_cifar10_through_tfds(tmp_path):
    """A tiny array_record 'cifar10' (same name, version and features) read by the real path."""
    import tensorflow_datasets as tfds
    from PIL import Image

    real = tfds.builder("cifar10", data_dir=tmp_path)

    class Cifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "cifar10"
        VERSION = real.version

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=real.info.features)

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(5), "test": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                image = np.full((32, 32, 3), 40 * i, np.uint8)
                yield i, {"id": f"x{i}", "image": Image.fromarray(image), "label": i}

    Cifar10(data_dir=tmp_path, file_format="array_record").download_and_prepare(
        file_format="array_record")
    batches = list(datasets.eval_iterator("cifar10", data_dir=tmp_path, image_size=32,
                                          global_batch_size=2))
    assert [b["mask"].tolist() for b in batches] == [[True, True], [True, False]]
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    images = np.concatenate([b["image"][b["mask"]] for b in batches])
    np.testing.assert_allclose(images, np.broadcast_to(40 * labels[:, None, None, None] / 255,
                                                       images.shape), atol=1e-6)
    it = datasets.train_iterator("cifar10", data_dir=tmp_path, image_size=16, global_batch_size=4,
                                 seed=0, process_index=0, process_count=1)
    b = next(it)
    assert b["image"].shape == (4, 16, 16, 3)
    want = np.broadcast_to(40 * b["label"][:, None, None, None] / 255, b["image"].shape)
    np.testing.assert_allclose(b["image"], want, atol=1e-6)

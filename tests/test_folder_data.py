"""Your own images (data.dataset = 'folder'): preparation, splits, reuse, bad input, end to end.

Oracles: the images themselves (PNG bytes decoded by PIL exactly; JPEG decoded by PIL from the same
file), the documented sorted-class labelling and seeded split, and invariants (an unchanged folder
is reused, a changed one prepared again; a resumed run equals the uninterrupted one bit for bit).
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_MODEL, main_cmd, main_env
from score_jax import checkpoints, datasets, folder_data, train
from score_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]


def _png_folder(root: pathlib.Path, classes=("cat", "ant"), per_class=6, size=8, channels=3,
                seed=0) -> dict[str, np.ndarray]:
    """Class subfolders of random PNGs; returns {relative path: uint8 [H, W, C]}."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
            Image.fromarray(image[..., 0] if channels == 1 else image).save(root / c / f"{i}.png")
            written[f"{c}/{i}.png"] = image
    return written


def _config(path, **data):
    config = experiment_config()
    with config.unlocked():
        config.data.path = str(path)
        for field, value in data.items():
            config.data[field] = value
    return config


def experiment_config():
    from configs.vp import folder_ddpmpp_continuous

    return folder_ddpmpp_continuous.get_config()


def _all(source) -> list[dict]:
    return [source[i] for i in range(len(source))]


def test_png_classes_labels_and_split(tmp_path):
    written = _png_folder(tmp_path / "imgs")
    data_dir = tmp_path / "tfds"
    listing = folder_data.list_path(tmp_path / "imgs")
    assert listing.class_names == ("ant", "cat")  # sorted: 'ant' is label 0
    splits = {s: _all(datasets.open_source("folder", s, data_dir, path=str(tmp_path / "imgs"),
                                           eval_fraction=0.25)) for s in ("train", "eval")}
    assert (len(splits["train"]), len(splits["eval"])) == (9, 3)
    idx = folder_data.split_indices(12, 0.25)
    perm = np.random.default_rng(0).permutation(12)
    assert list(idx["eval"]) == sorted(perm[:3]) and list(idx["train"]) == sorted(perm[3:])
    files = [os.path.relpath(f, listing.path) for f in listing.files]
    for split, examples in splits.items():
        for i, example in zip(idx[split], examples):
            name = files[i]
            np.testing.assert_array_equal(example["image"], written[name])
            assert example["label"] == ("ant", "cat").index(name.split("/")[0])
    # eval_fraction 0: the eval split is the train split, every example once.
    both = [datasets.open_source("folder", s, data_dir, path=str(tmp_path / "imgs"),
                                 eval_fraction=0.0) for s in ("train", "eval")]
    assert len(both[0]) == len(both[1]) == 12


def test_jpeg_flat_folder_and_npz(tmp_path):
    rng = np.random.default_rng(1)
    (tmp_path / "flat").mkdir()
    for i in range(4):  # mixed sizes are fine: the pipeline always resizes
        Image.fromarray(rng.integers(0, 256, (10 + i, 12, 3), dtype=np.uint8)).save(
            tmp_path / "flat" / f"p{i}.JPG", quality=90)
    (tmp_path / "flat" / ".DS_Store").write_bytes(b"\0\1")  # skipped
    source = datasets.open_source("folder", "train", tmp_path / "tfds", path=str(tmp_path / "flat"),
                                  eval_fraction=0.0)
    for i, example in enumerate(_all(source)):
        with Image.open(tmp_path / "flat" / f"p{i}.JPG") as im:
            np.testing.assert_array_equal(example["image"], np.asarray(im))
        assert example["label"] == 0
    # .npz: grayscale [N, H, W] with labels.
    images = rng.integers(0, 256, (5, 6, 6), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([3, 1, 0, 2, 1]))
    source = datasets.open_source("folder", "train", tmp_path / "tfds", path=str(tmp_path / "d.npz"),
                                  eval_fraction=0.0)
    np.testing.assert_array_equal(np.stack([e["image"] for e in _all(source)]), images[..., None])
    assert [e["label"] for e in _all(source)] == [3, 1, 0, 2, 1]


def test_pipeline_resizes_and_keeps_native_images(tmp_path):
    written = _png_folder(tmp_path / "imgs", classes=("a",), per_class=4, size=8)
    (tmp_path / "imgs" / "a" / "wide.png").unlink(missing_ok=True)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(tmp_path / "imgs" / "a" / "wide.png")
    kwargs = dict(data_dir=tmp_path / "tfds", path=str(tmp_path / "imgs"), eval_fraction=0.0,
                  global_batch_size=5, process_index=0, process_count=1)
    batch = next(datasets.eval_iterator("folder", image_size=8, **kwargs))
    assert batch["image"].shape == (5, 8, 8, 3)
    for j in range(4):  # native 8x8: exactly x / 255 (as tf.image.convert_image_dtype)
        np.testing.assert_array_equal(batch["image"][j],
                                      written[f"a/{j}.png"].astype(np.float32) * np.float32(1 / 255))
    np.testing.assert_array_equal(batch["image"][4], 0.0)  # 8x16: centre 8x8 of a black image
    small = next(datasets.eval_iterator("folder", image_size=4, **kwargs))
    assert small["image"].shape == (5, 4, 4, 3)


def test_prepared_once_reused_and_prepared_again_on_change(tmp_path):
    _png_folder(tmp_path / "imgs", classes=("a",), per_class=3)
    data_dir = tmp_path / "tfds"
    first = folder_data.list_path(tmp_path / "imgs")
    datasets.open_source("folder", "train", data_dir, path=str(tmp_path / "imgs"), eval_fraction=0)
    prepared = data_dir / "score_jax_folder" / f"folder_{first.key}" / "1.0.0"
    stamp = (prepared / "dataset_info.json").stat().st_mtime_ns
    datasets.open_source("folder", "train", data_dir, path=str(tmp_path / "imgs"), eval_fraction=0)
    assert (prepared / "dataset_info.json").stat().st_mtime_ns == stamp
    assert folder_data.list_path(tmp_path / "imgs").key == first.key
    new = np.full((8, 8, 3), 7, np.uint8)
    Image.fromarray(new).save(tmp_path / "imgs" / "a" / "1.png")
    os.utime(tmp_path / "imgs" / "a" / "1.png", ns=(1, 1))  # a different mtime whatever the clock
    second = folder_data.list_path(tmp_path / "imgs")
    assert second.key != first.key
    source = datasets.open_source("folder", "train", data_dir, path=str(tmp_path / "imgs"),
                                  eval_fraction=0)
    np.testing.assert_array_equal(source[1]["image"], new)
    assert len(list((data_dir / "score_jax_folder").glob("folder_*/1.0.0"))) == 2


def test_two_processes_prepare_at_once(tmp_path):
    _png_folder(tmp_path / "imgs", per_class=10)
    code = ("import sys; from score_jax import datasets; "
            "s = datasets.open_source('folder', 'train', sys.argv[1], path=sys.argv[2], "
            "eval_fraction=0.5); print(len(s), int(sum(e['image'].sum() for e in s)))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "tfds"),
                               str(tmp_path / "imgs")], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-2000:]
        outs.append(out.strip().splitlines()[-1])
    assert outs[0] == outs[1] and outs[0].startswith("10 ")
    assert len(list((tmp_path / "tfds" / "score_jax_folder").glob("folder_*/1.0.0"))) == 1


def _bad_inputs(tmp: pathlib.Path) -> dict:
    """name -> (data.path, words the one-line message must hold)."""
    (tmp / "empty").mkdir()
    _png_folder(tmp / "notes", classes=("a",), per_class=2)
    (tmp / "notes" / "a" / "readme.txt").write_text("hi")
    _png_folder(tmp / "mixed", classes=("a",), per_class=1)
    _png_folder(tmp / "mixed", classes=("b",), per_class=1, channels=1)
    _png_folder(tmp / "loose", classes=("a",), per_class=1)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp / "loose" / "x.png")
    _png_folder(tmp / "emptyclass", classes=("a",), per_class=1)
    (tmp / "emptyclass" / "b").mkdir()
    _png_folder(tmp / "broken", classes=("a",), per_class=2)
    (tmp / "broken" / "a" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    _png_folder(tmp / "truncated", classes=("a",), per_class=2, size=32)
    whole = (tmp / "truncated" / "a" / "1.png").read_bytes()  # its header reads, its pixels do not
    (tmp / "truncated" / "a" / "1.png").write_bytes(whole[:len(whole) // 2])
    np.savez(tmp / "float.npz", images=np.zeros((2, 4, 4, 3), np.float32))
    np.savez(tmp / "shape.npz", images=np.zeros((2, 4, 4, 5), np.uint8))
    np.savez(tmp / "two.npz", a=np.zeros((2, 4, 4, 3), np.uint8), b=np.zeros(2))
    np.savez(tmp / "labels.npz", images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(3, int))
    (tmp / "x.txt").write_text("no")
    return {"empty": (tmp / "empty", "no PNG or JPEG"), "non-image": (tmp / "notes", "readme.txt"),
            "mixed": (tmp / "mixed", "0.png' (grayscale)"), "missing": (tmp / "nope", "does not exist"),
            "unset": ("", "data.path is empty"), "loose": (tmp / "loose", "class subfolders"),
            "empty class": (tmp / "emptyclass", "'b'"), "damaged": (tmp / "broken", "0.png"),
            "truncated": (tmp / "truncated", "1.png' cannot be read"),
            "dtype": (tmp / "float.npz", "float32"), "shape": (tmp / "shape.npz", "(2, 4, 4, 5)"),
            "no images key": (tmp / "two.npz", "'images'"), "labels": (tmp / "labels.npz", "labels"),
            "not npz": (tmp / "x.txt", "not an .npz")}


def test_bad_input_is_one_line_before_the_workdir(tmp_path):
    for name, (path, words) in _bad_inputs(tmp_path).items():
        with pytest.raises(UserError) as err:
            datasets.open_source("folder", "train", tmp_path / "tfds", path=str(path),
                                 eval_fraction=0.1)
        message = str(err.value)
        assert "\n" not in message and words in message, (name, message)
    # Through the runtime: a wrong channel count, or a bad folder, stops train before the workdir.
    _png_folder(tmp_path / "gray", classes=("a",), per_class=4, channels=1)
    for path, words in ((tmp_path / "gray", "num_channels=1"), (tmp_path / "notes", "readme.txt")):
        config = _config(path, data_dir=str(tmp_path / "tfds"), image_size=8)
        with pytest.raises(UserError, match=words):
            train.train(config, tmp_path / "work")
        assert not (tmp_path / "work").exists()
    with pytest.raises(UserError, match="eval_fraction"):
        folder_data.split_indices(4, 1.0)


def test_fid_stats_opens_the_split(tmp_path, monkeypatch):
    """--mode fid_stats reads every example of the split it names, through the pipeline."""
    from score_jax import fid_stats, sample_quality

    _png_folder(tmp_path / "imgs", per_class=10)
    config = _config(tmp_path / "imgs", data_dir=str(tmp_path / "tfds"), image_size=8)
    seen = []

    def features(batch):  # uint8 [B, 8, 8, 3] -> stand-in features (no Inception weights here)
        seen.append(batch)
        return batch.reshape(batch.shape[0], -1)[:, :4].astype(np.float64), None

    monkeypatch.setattr(sample_quality, "image_features", lambda config: features)
    for split, n in (("train", 18), ("test", 2)):
        with config.unlocked():
            config.eval.stats_split = split
            config.eval.stats_file = str(tmp_path / f"{split}.npz")
        seen.clear()
        fid_stats.fid_stats(config, tmp_path / "work")
        with np.load(tmp_path / f"{split}.npz") as d:
            assert d["pool_3"].shape == (n, 4)
    assert sample_quality.stats_name(config).startswith("folder_")


# --------------------------------------------------------------------------- main.py


TINY = [f"--config={REPO / 'configs/vp/folder_ddpmpp_continuous.py'}", *TINY_MODEL,
        "--config.data.image_size=8",
        "--config.training.snapshot_freq=4", "--config.training.snapshot_freq_for_preemption=4",
        "--config.training.log_freq=4", "--config.training.snapshot_sampling=False",
        "--config.eval.batch_size=8", "--config.eval.begin_ckpt=2", "--config.eval.end_ckpt=2"]


def test_folder_batches_resume_exactly(tmp_path):
    """A resumed iterator of a folder data set continues with the very batches (what makes a
    resumed run bitwise; the mechanism itself is shown end to end in test_checkpoints)."""
    _png_folder(tmp_path / "imgs", classes=("a", "b"), per_class=32, size=8)
    make = lambda state=None: datasets.train_iterator(  # noqa: E731
        "folder", image_size=8, global_batch_size=16, seed=3, data_dir=tmp_path / "tfds",
        path=str(tmp_path / "imgs"), eval_fraction=0.1, uniform_dequantization=True,
        state=state)
    it = make()
    [next(it) for _ in range(3)]
    state = json.loads(json.dumps(it.get_state()))
    rest = [next(it) for _ in range(4)]  # crosses the epoch boundary (58 train images)
    resumed = make(state)
    for want in rest:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_main_trains_resumes_and_evaluates(tmp_path):
    """The real main.py on a folder: train 4 steps, then train_eval resumes to 8 and evaluates."""
    _png_folder(tmp_path / "imgs", classes=("a", "b"), per_class=32, size=8)
    env = main_env(tmp_path)
    workdir = tmp_path / "work"
    args = [f"--workdir={workdir}", *TINY, f"--config.data.path={tmp_path / 'imgs'}",
            "--config.eval.enable_sampling=False"]
    first = subprocess.run(main_cmd(*args, "--config.training.n_iters=4"), env=env,
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    # Resumed with 2 loader processes (spawned: they import main.py again as __mp_main__).
    second = subprocess.run(main_cmd(*args, "--mode=train_eval", "--config.training.n_iters=8",
                                     "--config.data.num_workers=2"),
                            env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming from the checkpoint at step 4" in second.stdout
    assert checkpoints.snapshot_steps(workdir / "checkpoints")[-1] == 8
    summary = json.loads((workdir / "eval" / "summary.json").read_text())
    assert summary["ckpt_2"]["step"] == 8 and np.isfinite(summary["ckpt_2"]["loss"])

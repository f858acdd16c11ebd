"""Input pipelines: random-access tfds sources, the official preprocessing, resumable iterators.

Every data set is read through `tfds.data_source` (array_record files, no TensorFlow, no network);
the embedded default 'digits' (score_jax.digits) is built locally on first use. Batches are
`{'image': float32 [B, H, W, C] in [0, 1], 'label': int32 [B], 'mask': bool [B]}` holding this
process's share B = global_batch_size // process_count of each global batch.

A training batch is a pure function of (seed, step): example positions step * G .. step * G + G - 1
of the endless stream formed by concatenating one seeded permutation per epoch, and each example's
flip and dequantisation noise come from (seed, epoch, example index). So a run resumed from
`TrainIterator.get_state()` sees exactly the batches of an uninterrupted run, with any number of
processes. Evaluation passes cover every example once; the last batch is padded and masked.

Preprocessing follows the official score_sde `datasets.py` (resize, crops, [0, 1] scaling). The
antialiased resizes re-implement `tf.image.resize(..., antialias=True)` (TensorFlow's
scale-and-translate kernels, also ported as `jax.image.scale_and_translate`) in numpy: the weights
are the same functions, but they are computed in float64 and summed in a different order, so
outputs differ from TensorFlow's by float32 rounding (~1e-6), and a rounding-sensitive uint8 cast
(the LSUN bicubic path) can differ by one level in rare pixels.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import signal
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np
from score_jax.errors import DatasetNotPreparedError, InvalidInputError
from score_jax.record_check import CheckedSource
from score_jax.tfrecords import TFRecordSource, record_offsets  # noqa: F401 - record_offsets: API
from score_jax.source_cache import CachedSource

NAMES = ("digits", "cifar10", "svhn_cropped", "celeba", "lsun/<category>", "ffhq", "celebahq", "folder")
# The official config names (config.data.dataset) -> ours; LSUN also needs config.data.category.
OFFICIAL_NAMES = {"CIFAR10": "cifar10", "SVHN": "svhn_cropped", "CELEBA": "celeba", "LSUN": "lsun",
                  "FFHQ": "ffhq", "CelebAHQ": "celebahq"}
_CONVERT = np.float32(1.0 / 255.0)  # tf.image.convert_image_dtype multiplies by this, not / 255


def get_data_scaler(centered: bool) -> Callable[[Any], Any]:
    """Data in [0, 1] -> [-1, 1] if centered, else unchanged (works on numpy and jax arrays)."""
    return (lambda x: x * 2.0 - 1.0) if centered else (lambda x: x)


def get_data_inverse_scaler(centered: bool) -> Callable[[Any], Any]:
    """Inverse of `get_data_scaler`: [-1, 1] -> [0, 1] if centered, else unchanged."""
    return (lambda x: (x + 1.0) / 2.0) if centered else (lambda x: x)


# ----------------------------------------------------------------------------- resizing


def _kernel(method: str, x: np.ndarray) -> np.ndarray:
    """TensorFlow's resize kernels at distances x >= 0: 'linear' triangle, 'cubic' Keys a=-0.5."""
    if method == "linear":
        return np.maximum(0.0, 1.0 - x)
    inner = ((1.5 * x - 2.5) * x) * x + 1.0
    outer = ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0
    return np.where(x >= 2.0, 0.0, np.where(x >= 1.0, outer, inner))


@functools.lru_cache(maxsize=64)
def resize_weights(in_size: int, out_size: int, method: str) -> np.ndarray:
    """Antialiased resize matrix float32 [out_size, in_size]: tf.image scale_and_translate weights."""
    if method not in ("linear", "cubic"):
        raise InvalidInputError(f"method must be 'linear' or 'cubic', got {method!r}.")
    inv_scale = in_size / out_size
    # Antialiasing widens the kernel by the shrink factor, so downsampling low-pass filters.
    kernel_scale = max(inv_scale, 1.0)
    sample = (np.arange(out_size) + 0.5) * inv_scale - 0.5
    w = _kernel(method, np.abs(sample[:, None] - np.arange(in_size)[None, :]) / kernel_scale)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(np.abs(total) > 1000.0 * np.finfo(np.float32).eps,
                 w / np.where(total != 0.0, total, 1.0), 0.0)
    w = np.where(((sample >= -0.5) & (sample <= in_size - 0.5))[:, None], w, 0.0)
    w = w.astype(np.float32)
    w.flags.writeable = False  # cached and shared
    return w


def resize(image: np.ndarray, height: int, width: int, method: str = "linear") -> np.ndarray:
    """Antialiased resize float32 [H, W, C] -> [height, width, C], as tf.image.resize(antialias=True)."""
    image = np.asarray(image, np.float32)
    if image.shape[:2] == (height, width):
        return image  # both kernels are exactly the identity at scale 1
    rows = resize_weights(image.shape[0], height, method)
    cols = resize_weights(image.shape[1], width, method)
    out = np.tensordot(rows, image, axes=(1, 0))  # [height, W, C]
    return np.matmul(cols, out)  # [width, W] @ [height, W, C] -> [height, width, C]


def central_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Centre size x size window of [H, W, C], top-left at ((H - size) // 2, (W - size) // 2)."""
    h, w = image.shape[:2]
    if size > min(h, w):
        raise InvalidInputError(f"crop size {size} exceeds the image shape {image.shape[:2]}.")
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def resize_small(image: np.ndarray, resolution: int) -> np.ndarray:
    """Bilinear antialiased resize of float [H, W, C] so that its shorter side is `resolution`."""
    h, w = image.shape[:2]
    ratio = resolution / min(h, w)
    # np.round rounds half to even, as tf.round does.
    return resize(image, int(np.round(h * ratio)), int(np.round(w * ratio)), "linear")


def crop_resize(image: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8: centre square crop, bicubic antialiased resize, truncate to uint8.

    The official code casts with tf.cast, which truncates towards zero; bicubic overshoot beyond
    [0, 255] is undefined there (it may wrap on some CPUs), here it is clipped first.
    """
    crop = min(image.shape[:2])
    out = resize(central_crop(image, crop).astype(np.float32), resolution, resolution, "cubic")
    return np.clip(out, 0.0, 255.0).astype(np.uint8)


def _to_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1] exactly as tf.image.convert_image_dtype."""
    return np.asarray(image).astype(np.float32) * _CONVERT


def _preprocess_small(image: np.ndarray, size: int) -> np.ndarray:
    """CIFAR-10, SVHN, digits: bilinear antialiased resize to size x size (identity if native)."""
    return resize(_to_float(image), size, size, "linear")


def _preprocess_celeba(image: np.ndarray, size: int) -> np.ndarray:
    """CelebA: central 140 x 140 crop (offset (39, 19) in 218 x 178), then shorter side -> size."""
    return resize_small(central_crop(_to_float(image), 140), size)


def _preprocess_lsun(image: np.ndarray, size: int) -> np.ndarray:
    """LSUN: at 128, shorter side -> 128 then central crop; else `crop_resize` (bicubic, uint8)."""
    if size == 128:
        return central_crop(resize_small(_to_float(image), size), size)
    return _to_float(crop_resize(image, size))


def _preprocess_folder(image: np.ndarray, size: int) -> np.ndarray:
    """Your own images: shorter side -> size (bilinear, antialiased), then the centre square.

    Identity for images already size x size; images of any size and aspect may be mixed.
    """
    return central_crop(resize_small(_to_float(image), size), size)


def _preprocess_tfrecord(image: np.ndarray, size: int) -> np.ndarray:
    """FFHQ / CelebA-HQ: stored at the training resolution; only scaled to [0, 1] (as official)."""
    if image.shape[0] != size or image.shape[1] != size:
        raise InvalidInputError(f"image_size is {size} but the TFRecords hold {image.shape[:2]} images; "
                                f"use the TFRecords file made for resolution {size}.")
    return _to_float(image)


# ----------------------------------------------------------------------------- data sources


@dataclasses.dataclass(frozen=True)
class _Spec:
    tfds_name: str
    train_split: str
    eval_split: str
    preprocess: Callable[[np.ndarray, int], np.ndarray]  # uint8 [H, W, C], size -> f32 [S, S, C]


_SPECS = {
    "digits": _Spec("digits", "train", "test", _preprocess_small),
    "folder": _Spec("", "train", "eval", _preprocess_folder),  # score_jax.folder_data
    "cifar10": _Spec("cifar10", "train", "test", _preprocess_small),
    "svhn_cropped": _Spec("svhn_cropped", "train", "test", _preprocess_small),
    "celeba": _Spec("celeb_a", "train", "validation", _preprocess_celeba),
    "lsun": _Spec("lsun", "train", "validation", _preprocess_lsun),
    "ffhq": _Spec("", "train", "train", _preprocess_tfrecord),  # official: eval on the train set
    "celebahq": _Spec("", "train", "train", _preprocess_tfrecord),
}


def _spec(name: str) -> tuple[_Spec, str]:
    """(spec, tfds name) of a data set name such as 'cifar10' or 'lsun/bedroom'."""
    base, _, category = name.partition("/")
    if base not in _SPECS or (base == "lsun") != bool(category):
        raise InvalidInputError(f"unknown data set name {name!r}; valid names: {', '.join(NAMES)}.")
    spec = _SPECS[base]
    return spec, (f"lsun/{category}" if base == "lsun" else spec.tfds_name)


def preprocess_image(name: str, image: np.ndarray, image_size: int) -> np.ndarray:
    """The official preprocessing of data set `name`: uint8 [H, W, C] -> float32 [S, S, C] in [0, 1]."""
    return _spec(name)[0].preprocess(np.asarray(image), image_size)


def _prepare_command(tfds_name: str, data_dir: str) -> str:
    """The shell command that prepares a tfds data set as array_record in data_dir."""
    return ("python -c \"import tensorflow_datasets as tfds; "
            f"tfds.builder('{tfds_name}', data_dir='{data_dir}')"
            ".download_and_prepare(file_format='array_record')\"")


def _data_dir(data_dir: str | os.PathLike | None) -> str:
    """The tfds data dir: data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (as tfds)."""
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def _tfds_source(tfds_name: str, split: str, data_dir: str | os.PathLike | None, download: bool):
    """Random-access tfds source of a prepared array_record data set; never touches the network
    unless download is True."""
    import tensorflow_datasets as tfds

    data_dir = _data_dir(data_dir)
    if tfds_name.startswith("lsun/"):
        categories = sorted(tfds.builder_cls("lsun").builder_configs)
        if tfds_name[5:] not in categories:
            raise InvalidInputError(f"unknown LSUN category {tfds_name[5:]!r} in data set name "
                                    f"'{tfds_name}'; valid categories: {', '.join(categories)}.")
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        if not download:
            raise DatasetNotPreparedError(
                f"Data set {tfds_name!r} is not prepared in data dir {data_dir!r} (looked for "
                f"{os.fspath(builder.data_dir)!r}), and score_jax does not download unless asked. "
                f"On a machine with network access (preparing some data sets also needs "
                f"`pip install tensorflow`; reading them does not) run: "
                f"{_prepare_command(tfds_name, data_dir)} and copy {data_dir}/{tfds_name} here, "
                f"or pass download=True to prepare it in place.")
        builder.download_and_prepare(file_format="array_record")
    # tfds.data_source reads only array_record; older preparations default to TFRecord.
    file_format = builder.info.file_format.value if builder.info.file_format else "tfrecord"
    if file_format != "array_record":
        raise DatasetNotPreparedError(
            f"Data set {tfds_name!r} in data dir {data_dir!r} is stored as {file_format}, which "
            f"has no random access. Prepare an array_record copy in another data dir with: "
            f"{_prepare_command(tfds_name, data_dir + '_array_record')}, or convert this one with "
            f"`tfds convert_format --root_data_dir={data_dir} --out_file_format=array_record` "
            f"(needs TensorFlow).")
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)


def open_source(name: str, split: str = "train", data_dir: str | os.PathLike | None = None, *,
                tfrecords_path: str | None = None, download: bool = False,
                path: str | None = None, eval_fraction: float | None = None) -> Sequence[dict]:
    """Random-access examples {'image': uint8 [H, W, C], 'label': int} of a data set split.

    tfds sources are wrapped in a `CachedSource`: each example is decoded once (up to 512 MB).

    Args:
      name: one of `NAMES` ('lsun/<category>' with a tfds LSUN category, e.g. 'lsun/bedroom').
      split: 'train', 'eval' (the official evaluation split of that data set) or a tfds split.
      data_dir: the tfds data dir; None means $TFDS_DATA_DIR or ~/tensorflow_datasets.
      tfrecords_path: the TFRecords file (or glob) of 'ffhq' / 'celebahq'.
      download: prepare a missing tfds data set (network access) instead of raising.
      path: 'folder' only: the folder of PNG/JPEG images or the uint8 .npz (score_jax.folder_data),
        prepared into data_dir on first use.
      eval_fraction: 'folder' only: the share of the examples in split 'eval' (0: eval = train).

    Raises:
      ValueError: unknown name, missing tfrecords_path, unusable folder images (one line).
      DatasetNotPreparedError: the data are not on disk; the message says how to prepare them.
      MissingDependencyError: 'ffhq' / 'celebahq' without TensorFlow.
    """
    spec, tfds_name = _spec(name)
    split = spec.eval_split if split == "eval" else split
    if name in ("ffhq", "celebahq"):
        if not tfrecords_path:
            raise InvalidInputError(f"data set {name!r} needs tfrecords_path (the official TFRecords "
                                    f"file), got {tfrecords_path!r}.")
        return CheckedSource(TFRecordSource(os.fspath(tfrecords_path)), name,
                             "Copy or make the TFRecords file again.")
    if name == "folder":
        from score_jax import folder_data

        if eval_fraction is None:
            raise InvalidInputError("data set 'folder' needs eval_fraction (data.eval_fraction), "
                                    "got None.")
        source, prepared = folder_data.open_split(path or "", split, _data_dir(data_dir),
                                                  eval_fraction)
        remedy = (f"Delete {prepared}; score_jax prepares it again from {path!r} (or touch a "
                  f"file of the folder).")
    elif name == "digits":
        from score_jax import digits

        source = digits.prepare(_data_dir(data_dir)).as_data_source(split=split)
        remedy = (f"Delete {os.fspath(source.dataset_info.data_dir)}; score_jax prepares the "
                  f"digits again by itself.")
    else:
        source = _tfds_source(tfds_name, split, data_dir, download)
        remedy = (f"Delete {os.fspath(source.dataset_info.data_dir)} and prepare it again: "
                  f"{_prepare_command(tfds_name, _data_dir(data_dir))}.")
    cached = CachedSource(CheckedSource(source, f"{name} ({split})", remedy))
    # A data set that fits the cache is decoded now, so a damaged record stops the run before it
    # writes anything; the first epoch would decode it all anyway.
    cached.fill()
    return cached


# ----------------------------------------------------------------------------- batches


@dataclasses.dataclass(frozen=True)
class Pipeline:
    """How examples become training / evaluation images; every random choice derives from seed."""

    source: Sequence[dict]
    preprocess: Callable[[np.ndarray, int], np.ndarray]
    image_size: int
    seed: int
    random_flip: bool
    uniform_dequantization: bool


_PERMUTATION, _EXAMPLE = 0, 1  # stream tags keep the two kinds of random numbers apart


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of one training epoch: a permutation [num_examples] from (seed, epoch)."""
    # Fixed-width words first and the (unbounded) seed last keep SeedSequence entropies distinct.
    perm = np.random.default_rng([_PERMUTATION, epoch, 0, seed]).permutation(num_examples)
    perm.flags.writeable = False
    return perm


def _example_image(pipe: Pipeline, example: dict, epoch: int, index: int,
                   train: bool) -> np.ndarray:
    """One preprocessed image float32 [S, S, C]: resize/crop, then flip and dequantisation."""
    image = np.asarray(example["image"])
    if image.ndim == 2:
        image = image[..., None]
    image = pipe.preprocess(image, pipe.image_size)
    rng = np.random.default_rng([_EXAMPLE, epoch, index, pipe.seed])
    flip = rng.random() < 0.5  # drawn even when unused, so the noise does not depend on the flag
    if train and pipe.random_flip and flip:
        image = image[:, ::-1]
    if pipe.uniform_dequantization:
        image = dequantize(image, rng.random(image.shape, np.float32))
    return np.ascontiguousarray(image, np.float32)


def dequantize(image: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Uniform dequantisation (x * 255 + u) / 256 of float32 [0, 1] images, u in [0, 1) same shape.

    Unlike the official float32 formula, a level k (x = k / 255) lands strictly inside its bin
    [k / 256, (k + 1) / 256): x * 255 is snapped to k when within 1e-3 (undoing the rounding of
    k * float32(1 / 255)), and a sum that float32 rounding would carry up to (k + 1) / 256 is
    clamped to the float32 just below it.
    """
    levels = np.asarray(image, np.float64) * 255.0
    snapped = np.round(levels)
    levels = np.where(np.abs(levels - snapped) < 1e-3, snapped, levels)
    out = ((levels + np.asarray(noise, np.float64)) / 256.0).astype(np.float32)
    top = ((levels + 1.0) / 256.0).astype(np.float32)
    return np.minimum(out, np.nextafter(top, np.float32(0.0)))


def _read(source: Sequence[dict], indices: list[int]) -> list[dict]:
    """Examples at indices, in one batched read where the source supports it."""
    getitems = getattr(source, "__getitems__", None)
    return list(getitems(indices)) if getitems is not None else [source[i] for i in indices]


def _assemble(pipe: Pipeline, positions: np.ndarray, indices: np.ndarray, epochs: np.ndarray,
              valid: np.ndarray, train: bool) -> dict[str, np.ndarray]:
    """Batch dict of the examples at `indices` where `valid`, zero-padded elsewhere."""
    examples = iter(_read(pipe.source, [int(i) for i in indices[valid]]))
    images, labels = [], np.zeros(positions.shape, np.int32)
    for j in range(positions.shape[0]):
        if valid[j]:
            example = next(examples)
            images.append(_example_image(pipe, example, int(epochs[j]), int(indices[j]), train))
            labels[j] = int(example.get("label", 0))
        else:
            images.append(None)
    shape = next((im.shape for im in images if im is not None), None)
    if shape is None:  # a batch of padding only: shape from a real example
        shape = _example_image(pipe, pipe.source[0], 0, 0, False).shape
    zeros = np.zeros(shape, np.float32)
    image = np.stack([zeros if im is None else im for im in images])
    return {"image": image, "label": labels, "mask": valid.copy()}


def _local_positions(step: int, global_batch_size: int, process_index: int,
                     process_count: int) -> np.ndarray:
    """Stream positions [global_batch_size // process_count] that process_index reads at step."""
    local = global_batch_size // process_count
    return step * global_batch_size + process_index * local + np.arange(local)


def train_batch(pipe: Pipeline, step: int, global_batch_size: int, process_index: int = 0,
                process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's share of training batch `step`: image [B, S, S, C], label [B], mask [B]."""
    n = len(pipe.source)
    positions = _local_positions(step, global_batch_size, process_index, process_count)
    epochs, offsets = positions // n, positions % n
    indices = np.array([epoch_permutation(pipe.seed, int(e), n)[o]
                        for e, o in zip(epochs, offsets)], np.int64).reshape(positions.shape)
    return _assemble(pipe, positions, indices, epochs, np.ones(positions.shape, bool), train=True)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    """Global batches in one evaluation pass: ceil(num_examples / global_batch_size)."""
    return -(-num_examples // global_batch_size)


def eval_batch(pipe: Pipeline, step: int, global_batch_size: int, process_index: int = 0,
               process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's share of evaluation batch `step` (examples in order, padding masked out)."""
    positions = _local_positions(step, global_batch_size, process_index, process_count)
    valid = positions < len(pipe.source)
    return _assemble(pipe, positions, positions, np.zeros_like(positions), valid, train=False)


_WORKER_PIPELINE: Pipeline | None = None  # set in worker processes only, by _start_worker


def _start_worker(pipeline: Pipeline, parent: int) -> None:
    """Worker process initialiser: keeps the pipeline; Ctrl-C is left to the main process."""
    global _WORKER_PIPELINE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops the pool, in one line
    _WORKER_PIPELINE = pipeline
    # An idle worker waits on a queue it holds both ends of, so it would outlive a killed parent.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    """Ends this worker process once the process `parent` is gone (polled every second)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _worker_batch(step: int, global_batch_size: int, process_index: int,
                  process_count: int) -> dict[str, np.ndarray]:
    """`train_batch` of the pipeline this worker process was started with."""
    return train_batch(_WORKER_PIPELINE, step, global_batch_size, process_index, process_count)


class TrainIterator:
    """Endless training batches whose position is a small JSON-able state (`get_state`).

    Batch `step` is `train_batch(pipeline, step, ...)`. With `workers` > 0 that many processes
    each build whole upcoming batches (decoding and augmenting outside this process's GIL);
    otherwise `prefetch` > 0 background threads do. Neither changes which batches come out.
    """

    def __init__(self, pipeline: Pipeline, global_batch_size: int, process_index: int,
                 process_count: int, name: str, prefetch: int = 0, workers: int = 0):
        if not isinstance(workers, int) or workers < 0:
            raise InvalidInputError(f"workers (data.num_workers) must be an int >= 0, got "
                                    f"{workers!r}.")
        self.pipeline, self.name = pipeline, name
        self.global_batch_size = global_batch_size
        self.process_index, self.process_count = process_index, process_count
        self.step = 0
        # Two batches per worker, so none idles while this process takes the last one it made.
        self._ahead = max(prefetch, 2 * workers)
        self._pool: concurrent.futures.Executor | None
        if workers > 0:
            # spawn, not fork: forking a process that runs JAX's threads can deadlock the child.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                workers, multiprocessing.get_context("spawn"), _start_worker,
                (pipeline, os.getpid()))
            self._load = functools.partial(_worker_batch, global_batch_size=global_batch_size,
                                           process_index=process_index,
                                           process_count=process_count)
        else:
            self._pool = concurrent.futures.ThreadPoolExecutor(prefetch) if prefetch > 0 else None
            self._load = functools.partial(train_batch, pipeline,
                                           global_batch_size=global_batch_size,
                                           process_index=process_index, process_count=process_count)
        self._pending: dict[int, concurrent.futures.Future] = {}

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """This process's share of the next global batch; advances the state by one step."""
        step, self.step = self.step, self.step + 1
        if self._pool is None:
            return self._load(step)
        for s in range(step, step + self._ahead + 1):
            if s not in self._pending:
                self._pending[s] = self._pool.submit(self._load, s)
        return self._pending.pop(step).result()

    def get_state(self) -> dict[str, Any]:
        """JSON-able position: the next global step and what it depends on."""
        return {"step": self.step, "seed": self.pipeline.seed, "dataset": self.name,
                "num_examples": len(self.pipeline.source),
                "global_batch_size": self.global_batch_size}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from a `get_state()` of a run with the same data set, seed and global batch."""
        mine = self.get_state()
        for field in ("seed", "dataset", "num_examples", "global_batch_size"):
            if state.get(field) != mine[field]:
                raise InvalidInputError(f"iterator state field {field!r} is {state.get(field)!r} but this "
                                        f"iterator has {mine[field]!r}; resume with the same settings.")
        step = state.get("step")
        if not isinstance(step, int) or step < 0:
            raise InvalidInputError(f"iterator state field 'step' must be an int >= 0, got {step!r}.")
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        self.step = step

    def close(self) -> None:
        """Stops the prefetch threads or worker processes."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _process(process_index: int | None, process_count: int | None,
             global_batch_size: int) -> tuple[int, int]:
    """(process_index, process_count), from jax when not given; checks the batch divides."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise InvalidInputError(f"process_index must be in [0, {process_count}), got {process_index}.")
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise InvalidInputError(f"global_batch_size must be a positive multiple of process_count="
                                f"{process_count}, got {global_batch_size}.")
    return process_index, process_count


def _pipeline(name: str, split: str, data_dir, image_size: int, seed: int, random_flip: bool,
              uniform_dequantization: bool, tfrecords_path, download: bool, path,
              eval_fraction) -> Pipeline:
    """Opens the source of a split and bundles it with the preprocessing options."""
    if not isinstance(image_size, int) or image_size <= 0:
        raise InvalidInputError(f"image_size must be a positive int, got {image_size!r}.")
    if not isinstance(seed, int) or seed < 0:
        raise InvalidInputError(f"seed must be an int >= 0, got {seed!r}.")
    source = open_source(name, split, data_dir, tfrecords_path=tfrecords_path, download=download,
                         path=path, eval_fraction=eval_fraction)
    if len(source) == 0:
        raise InvalidInputError(f"split {split!r} of data set {name!r} is empty.")
    return Pipeline(source, _spec(name)[0].preprocess, image_size, seed, random_flip,
                    uniform_dequantization)


def train_iterator(name: str, *, image_size: int, global_batch_size: int, seed: int,
                   data_dir: str | os.PathLike | None = None, split: str = "train",
                   random_flip: bool = True, uniform_dequantization: bool = False,
                   process_index: int | None = None, process_count: int | None = None,
                   state: dict[str, Any] | None = None, prefetch: int = 0, workers: int = 0,
                   tfrecords_path: str | None = None, download: bool = False,
                   path: str | None = None, eval_fraction: float | None = None) -> TrainIterator:
    """Endless shuffled training batches of this process: image [B, S, S, C] in [0, 1], label, mask.

    B = global_batch_size // process_count; processes read disjoint parts of each global batch.
    Pass a saved `state` (from `TrainIterator.get_state()`) to resume. `workers` > 0 builds the
    batches in that many processes, `prefetch` > 0 in threads (see `TrainIterator`). Other
    arguments and errors as `open_source`.
    """
    process_index, process_count = _process(process_index, process_count, global_batch_size)
    pipe = _pipeline(name, split, data_dir, image_size, seed, random_flip, uniform_dequantization,
                     tfrecords_path, download, path, eval_fraction)
    it = TrainIterator(pipe, global_batch_size, process_index, process_count, name, prefetch,
                       workers)
    if state is not None:
        it.set_state(state)
    return it


def eval_iterator(name: str, *, image_size: int, global_batch_size: int,
                  data_dir: str | os.PathLike | None = None, split: str = "eval",
                  uniform_dequantization: bool = False, seed: int = 0,
                  process_index: int | None = None, process_count: int | None = None,
                  tfrecords_path: str | None = None, download: bool = False,
                  path: str | None = None,
                  eval_fraction: float | None = None) -> Iterator[dict[str, np.ndarray]]:
    """One pass over a split in order, every example once: batches [B, S, S, C], 'mask' marks real.

    All processes yield `num_eval_batches(len(split), global_batch_size)` batches of shape B =
    global_batch_size // process_count; the padding (zeros, label 0) has mask False. No flips;
    dequantisation noise (for bits/dim) comes from (seed, example index).
    """
    process_index, process_count = _process(process_index, process_count, global_batch_size)
    pipe = _pipeline(name, split, data_dir, image_size, seed, False, uniform_dequantization,
                     tfrecords_path, download, path, eval_fraction)
    # A generator made after the checks, so that bad arguments raise here and not at first next().
    steps = range(num_eval_batches(len(pipe.source), global_batch_size))
    return (eval_batch(pipe, s, global_batch_size, process_index, process_count) for s in steps)


def from_official_name(dataset: str, category: str | None = None) -> str:
    """Official config.data.dataset (+ LSUN category) -> our name: ('LSUN', 'tower') -> 'lsun/tower'."""
    if dataset not in OFFICIAL_NAMES:
        raise InvalidInputError(f"unknown official data set {dataset!r}; valid: "
                                f"{', '.join(OFFICIAL_NAMES)}.")
    name = OFFICIAL_NAMES[dataset]
    return f"{name}/{category}" if name == "lsun" else name

"""Your own images as a data set: a folder of PNG/JPEG files or a uint8 .npz, prepared once.

`data.dataset = 'folder'` with `data.path` naming either
  - a folder of PNG / JPEG files (`.png`, `.jpg`, `.jpeg`, any case). Class subfolders, if any,
    become labels 0..K-1 in sorted name order, each searched recursively; files directly in the
    folder (and no subfolders) are all label 0. Hidden files and folders (a leading '.', such as
    .DS_Store) and Thumbs.db / desktop.ini are skipped; any other file is refused by name.
    RGBA / LA images lose their alpha channel; palette images become RGB. The images may differ
    in size: the pipeline always resizes (shorter side to data.image_size, then a centre crop).
    They must agree in colour: all grayscale (1 channel) or all colour (3).
  - an .npz of uint8 images [N, H, W, C] (C 1 or 3; [N, H, W] is C = 1), under the key 'images'
    or as the only array, with optional integer 'labels' [N] >= 0.

The images are written once, as array_record, into the tfds data dir under
`score_jax_folder/folder_<key>/1.0.0`, where the key hashes the resolved path and every file's
relative path, size and modification time: a changed folder is prepared again, an unchanged one
reused. They are then read through the same random-access tfds interface as every other data
set. tfds has its own folder builder (`tfds.folder_dataset.ImageFolder`), but it reads the
folder through `as_dataset`, i.e. tf.data (TensorFlow), and writes no array_record files that
`tfds.data_source` could read, so the builder here is written like score_jax.digits.

The train / eval split is taken at read time from a permutation seeded with `SPLIT_SEED`:
round(N * eval_fraction) examples (at least 1 when eval_fraction > 0) form the eval split, the
rest train; eval_fraction = 0 makes the eval split the whole data set, like train.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from score_jax import digits, record_check, safe_files
from score_jax.errors import InvalidInputError, MissingFileError

FORMAT_VERSION = "1.0.0"
SPLIT_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SKIPPED_NAMES = ("thumbs.db", "desktop.ini")  # and every name with a leading '.'
# PIL mode -> channels after decoding (alpha dropped, palette and 1-bit expanded).
MODE_CHANNELS = {"L": 1, "LA": 1, "1": 1, "RGB": 3, "RGBA": 3, "P": 3}


class FolderDataError(InvalidInputError):
    """data.path holds no usable images (empty, a non-image file, mixed colour, a bad .npz)."""


@dataclasses.dataclass(frozen=True)
class Listing:
    """What data.path holds: every image file (or the .npz) and its label, and their key."""

    path: str                       # resolved data.path
    files: tuple[str, ...]          # image files (absolute), or (the .npz,)
    labels: tuple[int, ...]         # per file; empty for an .npz
    class_names: tuple[str, ...]    # sorted class subfolders; () when there are none
    key: str                        # hash of path, names, sizes and mtimes

    @property
    def is_npz(self) -> bool:
        return self.path.lower().endswith(".npz")


# --------------------------------------------------------------------------- listing


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in SKIPPED_NAMES


def _images_in(folder: str, root: str) -> list[str]:
    """Image files under folder, recursively, sorted; a non-image file is refused by name."""
    found = []
    for here, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(names):
            if _hidden(name):
                continue
            full = os.path.join(here, name)
            if not name.lower().endswith(IMAGE_SUFFIXES):
                raise FolderDataError(
                    f"data.path {root!r} holds {os.path.relpath(full, root)!r}, which is not a "
                    f"PNG or JPEG file (by its name); move it out of the folder (hidden files, "
                    f"Thumbs.db and desktop.ini are skipped).")
            found.append(full)
    return found


def _key(path: str, files: Sequence[str]) -> str:
    """16 hex digits of sha256 over the path and each file's relative name, size and mtime."""
    entries = []
    for f in files:
        st = os.stat(f)
        entries.append([os.path.relpath(f, path), st.st_size, st.st_mtime_ns])
    text = json.dumps([FORMAT_VERSION, path, entries])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def list_path(path: str | os.PathLike) -> Listing:
    """The images (or .npz) at data.path with their labels; nothing is decoded.

    Raises:
      MissingFileError: data.path is empty or does not exist.
      FolderDataError: no images, a non-image file, an empty class subfolder, or files next to
        class subfolders.
    """
    raw = os.fspath(path)
    if not raw:
        raise MissingFileError("data.path is empty: with data.dataset='folder' set "
                               "--config.data.path to a folder of PNG/JPEG images or a uint8 .npz.")
    resolved = os.path.realpath(os.path.expanduser(raw))
    if not os.path.exists(resolved):
        raise MissingFileError(f"data.path {raw!r} does not exist.")
    if os.path.isfile(resolved):
        if not resolved.lower().endswith(".npz"):
            raise FolderDataError(f"data.path {raw!r} is a file but not an .npz; give a folder of "
                                  f"PNG/JPEG images or an .npz of uint8 images [N, H, W, C].")
        return Listing(resolved, (resolved,), (), (), _key(resolved, [resolved]))
    entries = sorted(e for e in os.listdir(resolved) if not _hidden(e))
    classes = [e for e in entries if os.path.isdir(os.path.join(resolved, e))]
    loose = [e for e in entries if e not in classes]
    if classes and loose:
        raise FolderDataError(
            f"data.path {raw!r} holds both class subfolders ({classes[0]!r}, ...) and files "
            f"directly in it ({loose[0]!r}, ...); put every image in a class subfolder, or use no "
            f"subfolders (all label 0).")
    if not classes:
        files = _images_in(resolved, resolved)
        labels = [0] * len(files)
    else:
        files, labels = [], []
        for label, name in enumerate(classes):
            found = _images_in(os.path.join(resolved, name), resolved)
            if not found:
                raise FolderDataError(f"data.path {raw!r}: class subfolder {name!r} holds no PNG "
                                      f"or JPEG images; remove it or add images.")
            files += found
            labels += [label] * len(found)
    if not files:
        raise FolderDataError(f"data.path {raw!r} holds no PNG or JPEG images.")
    return Listing(resolved, tuple(files), tuple(labels), tuple(classes), _key(resolved, files))


# --------------------------------------------------------------------------- checking


def _header(path: str) -> tuple[str, tuple[int, int]]:
    """(PIL mode, (width, height)) of an image file, from its header only."""
    from PIL import Image

    with safe_files.reading(path, "image"), Image.open(path) as image:
        return image.mode, image.size


def _check_images(listing: Listing) -> int:
    """Channels (1 or 3) shared by every image, from their headers; one line for a bad one."""
    first: dict[int, str] = {}
    for f in listing.files:
        mode, _ = _header(f)
        if mode not in MODE_CHANNELS:
            raise FolderDataError(f"image {f!r} has PIL mode {mode}; expected 8-bit grayscale or "
                                  f"colour (L, RGB, RGBA, LA, P, 1).")
        first.setdefault(MODE_CHANNELS[mode], f)
        if len(first) > 1:
            raise FolderDataError(
                f"data.path {listing.path!r} mixes grayscale and colour images, e.g. {first[1]!r} "
                f"(grayscale) and {first[3]!r} (colour); convert them to one kind.")
    return next(iter(first))


def _npz_arrays(listing: Listing) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, H, W, C], int64 labels [N]) of an .npz, checked."""
    path = listing.path
    arrays = safe_files.load_npz(path, "data.path")
    if "images" in arrays:
        images = arrays["images"]
    elif len(arrays) == 1:
        images = next(iter(arrays.values()))
    else:
        raise FolderDataError(f"data.path {path!r} holds arrays {sorted(arrays)} but none named "
                              f"'images'; name the image array 'images'.")
    if images.dtype != np.uint8:
        raise FolderDataError(f"data.path {path!r}: images have dtype {images.dtype}; expected "
                              f"uint8 in 0..255 (convert with np.uint8 after scaling).")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or 0 in images.shape[1:3]:
        raise FolderDataError(f"data.path {path!r}: images have shape {images.shape}; expected "
                              f"[N, H, W, C] with C 1 or 3.")
    if images.shape[0] == 0:
        raise FolderDataError(f"data.path {path!r} holds no images (shape {images.shape}).")
    labels = arrays.get("labels")
    if labels is None:
        return images, np.zeros(images.shape[0], np.int64)
    if (labels.dtype.kind not in "iu" or labels.shape != images.shape[:1]
            or (labels.size and labels.min() < 0)):
        raise FolderDataError(f"data.path {path!r}: 'labels' has shape {labels.shape} and dtype "
                              f"{labels.dtype}; expected integers >= 0 of shape "
                              f"[{images.shape[0]}].")
    return images, labels.astype(np.int64)


def _decode(path: str, channels: int) -> np.ndarray:
    """uint8 [H, W, channels] of an image file: alpha dropped, 1-bit kept as one channel."""
    image = safe_files.open_image(path, "image")
    if image.ndim == 2:
        image = image[..., None]
    return image[..., :channels]


# --------------------------------------------------------------------------- the tfds builder


@dataclasses.dataclass(eq=False)
class FolderConfig(tfds.core.BuilderConfig):
    """One folder's contents: its listing, and the shared channel count and class count."""

    listing: Listing | None = dataclasses.field(default=None, repr=False)  # tfds logs the repr
    channels: int = 3
    num_classes: int = 1


class FolderImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """The images of data.path, uint8 [H, W, C] (stored as PNG), labels; one split 'train'.

    Example i is file i of the sorted listing (class by class), or image i of the .npz.
    """

    name = "score_jax_folder"
    VERSION = tfds.core.Version(FORMAT_VERSION)
    RELEASE_NOTES = {FORMAT_VERSION: "Images of a user folder or .npz."}

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Images of {config.listing.path}.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, config.channels)),
                "label": tfds.features.ClassLabel(num_classes=config.num_classes),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # record i is example i, so the split indices are stable
        )

    def _split_generators(self, dl_manager):
        """One split of every image; train / eval are chosen at read time (`split_indices`)."""
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self) -> Iterator[tuple[int, dict]]:
        """Yields (index, {'image': PIL image, 'label': int})."""
        from PIL import Image  # encoding a PIL image needs no TensorFlow (a numpy array would)

        config = self.builder_config
        listing = config.listing
        if listing.is_npz:
            images, labels = _npz_arrays(listing)
            pairs = ((images[i], int(labels[i])) for i in range(images.shape[0]))
        else:
            pairs = ((_decode(f, config.channels), label)
                     for f, label in zip(listing.files, listing.labels))
        for i, (image, label) in enumerate(pairs):
            mode = "L" if image.shape[-1] == 1 else "RGB"
            yield i, {"image": Image.fromarray(image[..., 0] if mode == "L" else image, mode=mode),
                      "label": label}


def _builder(listing: Listing, data_dir: str, channels: int = 3,
             num_classes: int = 1) -> FolderImages:
    config = FolderConfig(name=f"folder_{listing.key}", version=FORMAT_VERSION,
                          release_notes=FolderImages.RELEASE_NOTES, description=listing.path,
                          listing=listing, channels=channels, num_classes=num_classes)
    return FolderImages(config=config, data_dir=data_dir, file_format="array_record")


def _shape_of(listing: Listing) -> tuple[int, int]:
    """(channels, classes) of the data at listing, every image checked (headers or the .npz)."""
    if listing.is_npz:
        images, labels = _npz_arrays(listing)
        return images.shape[-1], int(labels.max()) + 1
    return _check_images(listing), max(len(listing.class_names), 1)


def prepare(listing: Listing, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """Builds the data set of `listing` into data_dir once (array_record); returns its builder.

    Concurrent callers serialise on `<data_dir>/score_jax_folder/folder_<key>.lock` (as
    score_jax.digits): the first builds, the others find it prepared. Bad input is refused in one
    line before tfds writes anything.
    """
    data_dir = os.fspath(data_dir)
    prepared = os.path.join(data_dir, FolderImages.name, f"folder_{listing.key}", FORMAT_VERSION)
    if os.path.isfile(os.path.join(prepared, "dataset_info.json")):
        # No lock needed to read, so a read-only data dir works. Read back with the features as
        # stored (their channel and class counts): the folder is not checked again.
        return tfds.builder_from_directory(prepared)
    lock_dir = os.path.join(data_dir, FolderImages.name)
    os.makedirs(lock_dir, exist_ok=True)
    with digits.file_lock(os.path.join(lock_dir, f"folder_{listing.key}.lock")):
        channels, num_classes = _shape_of(listing)
        builder = _builder(listing, data_dir, channels, num_classes)
        if not builder.is_prepared():
            builder.download_and_prepare(file_format="array_record")
    return builder


def stats_key(path: str | os.PathLike, eval_fraction: float) -> str:
    """'folder_<16 hex digits>' naming the contents at path and the split they are cut into."""
    text = json.dumps([list_path(path).key, float(eval_fraction)])
    return f"folder_{hashlib.sha256(text.encode()).hexdigest()[:16]}"


# --------------------------------------------------------------------------- splits


def split_indices(num_examples: int, eval_fraction: float) -> dict[str, np.ndarray]:
    """Sorted example indices of 'train' and 'eval', from a permutation seeded with SPLIT_SEED."""
    if not isinstance(eval_fraction, (int, float)) or not 0.0 <= eval_fraction < 1.0:
        raise InvalidInputError(f"data.eval_fraction must be in [0, 1), got {eval_fraction!r}.")
    everything = np.arange(num_examples)
    if eval_fraction == 0.0:
        return {"train": everything, "eval": everything}
    n_eval = max(1, int(round(num_examples * eval_fraction)))
    if n_eval >= num_examples:
        raise InvalidInputError(f"data.eval_fraction={eval_fraction} leaves no training example "
                                f"of {num_examples}; lower it (0 = evaluate on the train split).")
    perm = np.random.default_rng(SPLIT_SEED).permutation(num_examples)
    return {"train": np.sort(perm[n_eval:]), "eval": np.sort(perm[:n_eval])}


class Subset(Sequence):
    """Examples `indices` of a random-access source; damaged records still name their file."""

    def __init__(self, source: Sequence[dict], indices: np.ndarray):
        self.source, self.indices = source, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.source[int(self.indices[i])]

    def __getitems__(self, indices: Sequence[int]) -> list:
        return list(self.source.__getitems__([int(self.indices[i]) for i in indices]))

    def locate(self, i: int) -> tuple[str, int]:
        """(file, position in it) of example i."""
        return record_check.record_location(self.source, int(self.indices[i]))


def open_split(path: str | os.PathLike, split: str, data_dir: str | os.PathLike,
               eval_fraction: float) -> tuple[Subset, str]:
    """(random-access examples of split 'train' or 'eval', the prepared data set's directory)."""
    if split not in ("train", "eval"):
        raise InvalidInputError(f"the folder data set has splits 'train' and 'eval', not "
                                f"{split!r}.")
    builder = prepare(list_path(path), data_dir)
    source = builder.as_data_source(split="train")
    indices = split_indices(len(source), eval_fraction)[split]
    return Subset(source, indices), os.fspath(builder.data_dir)

"""The embedded default data set: scikit-learn's 8x8 handwritten digits as a local tfds data set.

scikit-learn ships the UCI optical-recognition digits (1797 images, 8x8, grey levels 0..16) inside
its wheel, so this data set builds offline. It is written once, as array_record, into the tfds data
dir (`<data_dir>/digits/1.0.0`) and then read through the same random-access tfds interface as
CIFAR-10. Importing this module imports tensorflow_datasets (not TensorFlow).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

NUM_EXAMPLES = 1797
NUM_TRAIN = 1500  # the remaining 297 form the test split
SPLIT_SEED = 0
LEVELS = 17  # sklearn's grey levels 0..16


def split_indices() -> dict[str, np.ndarray]:
    """sklearn example indices of each split: {'train': [1500], 'test': [297]}, seeded."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(NUM_EXAMPLES)
    return {"train": np.sort(perm[:NUM_TRAIN]), "test": np.sort(perm[NUM_TRAIN:])}


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Grey levels 0..16 [..., 8, 8] -> uint8 [..., 8, 8, 1]: round(v * 255 / 16), 17 levels kept."""
    return np.round(np.asarray(images, np.float64) * 255.0 / 16.0).astype(np.uint8)[..., None]


class Digits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """sklearn handwritten digits, uint8 [8, 8, 1] in 0..255, labels 0..9.

    Splits: a permutation of the 1797 examples seeded with `SPLIT_SEED` = 0
    (`np.random.default_rng(0).permutation(1797)`): its first 1500 are 'train', the last 297
    'test'. Grey levels v in 0..16 are stored as round(v * 255 / 16): the 17 levels stay distinct.
    The tfds key of each example is its index in `sklearn.datasets.load_digits()`.
    """

    name = "digits"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "sklearn load_digits, seeded 1500/297 split."}

    def _info(self) -> tfds.core.DatasetInfo:
        """Features: 'image' uint8 [8, 8, 1] (PNG), 'label' in 0..9."""
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn handwritten digits (UCI optdigits), 8x8 grey.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        """Both splits come from the copy of the data inside scikit-learn; nothing is downloaded."""
        del dl_manager
        return {split: self._generate_examples(idx) for split, idx in split_indices().items()}

    def _generate_examples(self, indices: np.ndarray) -> Iterator[tuple[int, dict]]:
        """Yields (sklearn index, {'image': PIL image, 'label': int})."""
        from PIL import Image  # encoding a PIL image needs no TensorFlow (a numpy array would)
        from sklearn.datasets import load_digits

        data = load_digits()
        images = to_uint8(data.images)
        for i in indices:
            yield int(i), {"image": Image.fromarray(images[i, ..., 0], mode="L"),
                           "label": int(data.target[i])}


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """Holds an exclusive advisory lock on `path` (created if missing) for the block."""
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def prepare(data_dir: str | os.PathLike) -> Digits:
    """Builds the digits data set into data_dir once (array_record) and returns its builder.

    Concurrent callers serialise on `<data_dir>/digits.lock`: the first builds (tfds writes into
    an `incomplete.*` dir and renames it), the others then find the data prepared and reuse it.
    """
    data_dir = os.fspath(data_dir)
    builder = Digits(data_dir=data_dir, file_format="array_record")
    if builder.is_prepared():  # no lock needed to read, so a read-only data dir works
        return builder
    os.makedirs(data_dir, exist_ok=True)
    with file_lock(os.path.join(data_dir, "digits.lock")):
        # The builder is created under the lock so that it sees a build finished by another process.
        builder = Digits(data_dir=data_dir, file_format="array_record")
        if not builder.is_prepared():
            builder.download_and_prepare(file_format="array_record")
    return builder

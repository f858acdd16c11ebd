"""A small digits classifier as the offline feature network of the embedded 8x8 data set.

Its 64-d penultimate features give "FD-digits" (Fréchet distance, as FID but of this network)
and its 10 logits "IS-digits" and the class histogram of samples. These are quality scores for
the embedded data set only; they are not FID/IS and are not comparable with published numbers.
The shipped weights (`assets/digits_classifier.npz`, made by
`bash run.sh -m score_jax.metrics.train_digits_classifier`) reach 97-98% test accuracy.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import safe_files
from score_jax.errors import InvalidInputError, MissingFileError
from score_jax.metrics import fid

FEATURE_DIM = 64
NUM_CLASSES = 10
WEIGHTS_PATH = os.path.join(os.path.dirname(__file__), "assets", "digits_classifier.npz")


class DigitsOutput(NamedTuple):
    """Classifier outputs of a batch: features [N, 64] and logits [N, 10]."""

    features: jax.Array
    logits: jax.Array


class DigitsClassifier(nn.Module):
    """CNN on images x [N, 8, 8, 1] in [0, 1] -> DigitsOutput (3x3 convs, pooling to 4x4)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> DigitsOutput:
        x = nn.relu(nn.Conv(32, (3, 3), name="conv1")(x))
        x = nn.relu(nn.Conv(64, (3, 3), name="conv2")(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(64, (3, 3), name="conv3")(x))
        x = x.reshape(x.shape[0], -1)
        features = nn.relu(nn.Dense(FEATURE_DIM, name="features")(x))
        return DigitsOutput(features, nn.Dense(NUM_CLASSES, name="logits")(features))


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The embedded digits split as (uint8 images [N, 8, 8, 1], labels [N]), read from sklearn.

    The same examples, order and values as `datasets.open_source('digits', split)`
    (score_jax.digits builds that data set from this copy), without writing a tfds data set.
    """
    from sklearn.datasets import load_digits

    from score_jax import digits

    indices = digits.split_indices()
    if split not in indices:
        raise InvalidInputError(f"split={split!r}: expected one of {sorted(indices)}")
    data = load_digits()
    idx = indices[split]
    return digits.to_uint8(data.images[idx]), data.target[idx].astype(np.int32)


def to_input(images: jax.Array) -> jax.Array:
    """uint8 images [N, 8, 8, 1] -> float32 in [0, 1], the classifier's input."""
    return images.astype(jnp.float32) / 255.0


def save_params(path: str | os.PathLike, params: dict) -> None:
    """Writes classifier parameters as a flat .npz ('conv1/kernel', ...), float32."""
    flat = {"/".join(k.key for k in path_): np.asarray(v, np.float32)
            for path_, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(path, **flat)


def load_params(path: str | os.PathLike = WEIGHTS_PATH) -> dict:
    """Classifier parameters from a flat .npz (default: the shipped weights)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(
            f"digits classifier weights not found at {path!r}; they ship with score_jax "
            "(score_jax/metrics/assets/) and are rebuilt by "
            "`bash run.sh -m score_jax.metrics.train_digits_classifier --out <path>`")
    params: dict = {}
    for key, value in safe_files.load_npz(path, "digits classifier weights").items():
        *scopes, leaf = key.split("/")
        node = params
        for scope in scopes:
            node = node.setdefault(scope, {})
        node[leaf] = value
    return params


@jax.jit
def _apply(params: dict, images: jax.Array) -> DigitsOutput:
    """Classifier outputs of uint8 images; one module-level jit, so every call shares its cache."""
    return DigitsClassifier().apply({"params": params}, to_input(images))


def make_digits_fn(params: dict) -> Callable[[jax.Array], DigitsOutput]:
    """Jitted classifier outputs of uint8 images [N, 8, 8, 1] for fixed `params`."""
    return lambda images: _apply(params, images)


def _check_digits(images: np.ndarray) -> None:
    """Raises InvalidInputError unless images is uint8 [N >= 2, 8, 8, 1]."""
    if images.dtype != np.uint8 or images.shape[1:] != (8, 8, 1) or images.shape[0] < 2:
        raise InvalidInputError(
            f"digits samples: got dtype {images.dtype}, shape {images.shape}; expected uint8 "
            "[N >= 2, 8, 8, 1] in 0..255 (the digits configs' image size and channels)")


def digits_outputs(images: np.ndarray, params: dict | None = None,
                   batch_size: int = 500) -> DigitsOutput:
    """Features [N, 64] and logits [N, 10] (numpy) of uint8 images [N, 8, 8, 1], in batches.

    Batches are padded to `batch_size` (padding dropped), so one shape compiles per batch size.
    """
    images = np.asarray(images)
    _check_digits(images)
    fn = make_digits_fn(load_params() if params is None else params)
    feats, logits = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        n = len(batch)
        out = fn(np.concatenate([batch, np.zeros((batch_size - n, 8, 8, 1), np.uint8)]))
        feats.append(np.asarray(out.features)[:n])
        logits.append(np.asarray(out.logits)[:n])
    return DigitsOutput(np.concatenate(feats), np.concatenate(logits))


def digits_reference_stats(split: str = "train", params: dict | None = None) -> fid.ReferenceStats:
    """Classifier features of a real digits split and their moments (the FD-digits reference)."""
    images, _ = digits_split(split)
    feats = digits_outputs(images, params).features
    mu, sigma = fid.mean_cov(feats)
    return fid.ReferenceStats(feats, mu, sigma)


def digits_metrics(samples: np.ndarray, reference: fid.ReferenceStats,
                   params: dict | None = None) -> dict[str, float]:
    """Quality of uint8 digit samples [N, 8, 8, 1] against `reference` statistics.

    Returns {'fd_digits': Fréchet distance of classifier features, 'is_digits': Inception-Score
    formula on the classifier's logits (one split; 1..10), 'class_0'..'class_9': fraction of
    samples the classifier puts in each class}.
    """
    out = digits_outputs(samples, params)
    mu, sigma = fid.mean_cov(out.features)
    counts = np.bincount(np.argmax(out.logits, axis=1), minlength=NUM_CLASSES)
    result = {"fd_digits": fid.frechet_distance(mu, sigma, reference.mu, reference.sigma),
              "is_digits": fid.inception_score(out.logits)}
    result.update({f"class_{c}": float(counts[c] / len(samples)) for c in range(NUM_CLASSES)})
    return result

"""Improved precision and recall of samples in a feature space (Kynkäänniemi et al., 2019).

Each set of features stands for a manifold: the union of balls around its points, each ball's
radius the distance to the point's k-th nearest neighbour in its own set. Precision is the share of
samples inside the real manifold (are the samples realistic?); recall the share of real points
inside the sample manifold (is the data's variety covered?). A two-moment statistic such as FD
cannot see a few ambiguous strokes or a dropped mode; these two can.

References:
  Kynkäänniemi, Karras, Laine, Lehtinen, Aila. Improved Precision and Recall Metric for Assessing
  Generative Models. NeurIPS 2019 (k = 3, as there).
"""

from __future__ import annotations

import numpy as np

from score_jax.errors import InvalidInputError

_BLOCK = 1024


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances [len(a), len(b)] in float64, clipped at 0."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Squared distance of each row of x [N, D] to its k-th nearest other row: [N]."""
    radii = np.empty(len(x))
    for start in range(0, len(x), _BLOCK):
        d = _squared_distances(x[start:start + _BLOCK], x)
        # Column 0 of the partition is the point itself (distance 0); k more after it.
        radii[start:start + _BLOCK] = np.partition(d, k, axis=1)[:, k]
    return radii


def coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Share of `queries` [M, D] within radius of some point of `manifold` [N, D] (radii [N])."""
    inside = 0
    for start in range(0, len(queries), _BLOCK):
        d = _squared_distances(queries[start:start + _BLOCK], manifold)
        inside += int(np.any(d <= radii[None, :], axis=1).sum())
    return inside / len(queries)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall) of samples' features fake [M, D] against real features real [N, D]."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise InvalidInputError(f"precision/recall: features must be [N, D] of one D, got {real.shape} "
                                f"and {fake.shape}.")
    if min(len(real), len(fake)) <= k:
        raise InvalidInputError(f"precision/recall with k={k} needs more than {k} real and {k} "
                                f"sample features, got {len(real)} and {len(fake)}.")
    precision = coverage(real, knn_radii(real, k), fake)
    recall = coverage(fake, knn_radii(fake, k), real)
    return precision, recall

"""Improved precision and recall against point sets whose answers are known."""

import ml_collections
import numpy as np
import pytest

from score_jax import sample_quality
from score_jax.errors import InvalidInputError
from score_jax.metrics import digits_net
from score_jax.metrics.precision_recall import knn_radii, precision_recall


def test_knn_radius_on_a_grid_is_the_spacing_times_k():
    # Points 0, 1, 2, ..., 9 on a line: an interior point's 2nd neighbour is at distance 1, its
    # 4th at 2 (squared: 1 and 4); the end point 0 has neighbours 1, 2, 3, 4.
    x = np.arange(10.0)[:, None]
    np.testing.assert_allclose(knn_radii(x, 2)[[0, 5]], [4.0, 1.0])
    np.testing.assert_allclose(knn_radii(x, 4)[[0, 5]], [16.0, 4.0])


def test_identical_sets_are_fully_precise_and_covered():
    x = np.random.default_rng(0).standard_normal((300, 5))
    assert precision_recall(x, x) == (1.0, 1.0)


def test_far_apart_sets_have_neither():
    rng = np.random.default_rng(1)
    real = rng.standard_normal((200, 3))
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)


def test_a_dropped_mode_costs_recall_not_precision():
    # Real data: two far-apart blobs of equal weight; samples: exactly the points of one of them.
    # Every sample lies on the real manifold (precision 1); every real point of the kept blob is a
    # sample, and none of the other blob is near one (recall 1/2).
    rng = np.random.default_rng(2)
    kept, dropped = rng.standard_normal((500, 2)) - 50.0, rng.standard_normal((500, 2)) + 50.0
    assert precision_recall(np.concatenate([kept, dropped]), kept) == (1.0, 0.5)


def test_samples_off_the_manifold_cost_precision_exactly():
    # Real: a unit grid (k=1 radius 1). Samples: 30 on grid points, 10 far away: precision 3/4.
    real = np.arange(100.0)[:, None]
    fake = np.concatenate([np.arange(30.0), 1000.0 + np.arange(10.0)])[:, None]
    precision, _ = precision_recall(real, fake, k=1)
    assert precision == 0.75


def test_bad_shapes_are_one_line():
    with pytest.raises(InvalidInputError, match="more than 3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
    with pytest.raises(InvalidInputError, match="one D"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))


def test_real_digits_score_high_and_noise_low_on_the_digits_features():
    config = ml_collections.ConfigDict({  # only what get_scorer reads
        "data": {"dataset": "digits"},
        "eval": {"sample_metrics": ("fd_digits", "precision_digits", "recall_digits"),
                 "stats_file": ""}})
    scorer = sample_quality.get_scorer(config)
    test_images, _ = digits_net.digits_split("test")
    real = sample_quality.score_samples(scorer, test_images)
    noise = sample_quality.score_samples(scorer, np.random.default_rng(0).integers(
        0, 256, test_images.shape, dtype=np.uint8))
    assert real["precision_digits"] > 0.8 and real["recall_digits"] > 0.8
    assert noise["precision_digits"] < 0.3 and noise["recall_digits"] < 0.3

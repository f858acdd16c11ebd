"""Fréchet distance, KID, IS and feature moments against closed forms; the digits feature net."""

import numpy as np
import pytest
import scipy.linalg

from score_jax.errors import InvalidInputError, MissingFileError
from score_jax.metrics import digits_net, fid


def _random_spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d)) * scale
    return a @ a.T / d + 0.1 * np.eye(d)


def _gaussian_set(rng, n=4000, d=8):
    return rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)


# ------------------------------------------------------------------ Fréchet distance

def test_sqrtm_matches_scipy():
    s = _random_spd(np.random.default_rng(0), 20)
    root = fid.sqrtm_psd(s)
    np.testing.assert_allclose(root, scipy.linalg.sqrtm(s).real, atol=1e-10)
    np.testing.assert_allclose(root @ root, s, atol=1e-10)


def test_frechet_matches_scipy_sqrtm_of_product():
    rng = np.random.default_rng(1)
    s1, s2 = _random_spd(rng, 16), _random_spd(rng, 16, 2.0)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), want, rtol=1e-9)


def test_frechet_closed_form_commuting_covariances():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: FD = |dmu|^2 + sum (sqrt a - sqrt b)^2.
    rng = np.random.default_rng(2)
    q, _ = np.linalg.qr(rng.standard_normal((10, 10)))
    a, b = rng.uniform(0.1, 3, 10), rng.uniform(0.1, 3, 10)
    dmu = rng.standard_normal(10)
    want = dmu @ dmu + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = fid.frechet_distance(dmu, (q * a) @ q.T, np.zeros(10), (q * b) @ q.T)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(fid.frechet_distance(dmu, np.diag(a), np.zeros(10), np.diag(b)),
                               want, rtol=1e-12)


def test_fid_of_sets_self_shift_and_scale():
    rng = np.random.default_rng(3)
    x = _gaussian_set(rng)
    mu, sigma = fid.mean_cov(x)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9
    shift = rng.standard_normal(8)
    mu_s, sigma_s = fid.mean_cov(x + shift)
    np.testing.assert_allclose(fid.frechet_distance(mu, sigma, mu_s, sigma_s), shift @ shift,
                               rtol=1e-8)
    # c x: mean c mu, covariance c^2 S, so FD = (1 - c)^2 (|mu|^2 + tr S).
    c = 1.7
    mu_c, sigma_c = fid.mean_cov(c * x)
    np.testing.assert_allclose(fid.frechet_distance(mu, sigma, mu_c, sigma_c),
                               (1 - c) ** 2 * (mu @ mu + np.trace(sigma)), rtol=1e-8)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(InvalidInputError, match="sigma2"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


# ------------------------------------------------------------------ streaming moments

def test_feature_stats_streamed_equal_numpy_cov():
    rng = np.random.default_rng(4)
    x = _gaussian_set(rng, 1000, 6).astype(np.float32)
    stats = fid.FeatureStats.empty(6)
    for chunk in np.array_split(x[:700], 7):
        stats = stats.update(chunk)
    other = fid.FeatureStats.empty(6).update(x[700:])
    mu, cov = stats.merge(other).mean_cov()
    assert stats.merge(other).count == 1000
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


def test_feature_stats_need_two_rows():
    with pytest.raises(InvalidInputError, match="at least 2"):
        fid.FeatureStats.empty(3).update(np.zeros((1, 3))).mean_cov()


# ------------------------------------------------------------------ KID

def _mmd2_brute_force(x, y):
    k = lambda a, b: (a @ b / len(a) + 1) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_with_cubic_kernel():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) + 0.3
    want = _mmd2_brute_force(x, y)
    # One subset holding every row (in some order) and one block: both are the plain estimate.
    np.testing.assert_allclose(fid.kernel_inception_distance(x, y, num_subsets=1), want,
                               rtol=1e-10)
    np.testing.assert_allclose(fid.kernel_inception_distance_blocks(x, y), want, rtol=1e-10)


def test_kid_blocks_follow_tf_gan_partition():
    rng = np.random.default_rng(6)
    # ceil(9 / 3) = 3 blocks each: x's 7 rows in consecutive blocks of 2, 2, 3 (the larger
    # last, as TF-GAN), y's 9 rows in 3, 3, 3.
    x, y = rng.standard_normal((7, 3)), rng.standard_normal((9, 3))
    want = np.mean([_mmd2_brute_force(x[0:2], y[0:3]), _mmd2_brute_force(x[2:4], y[3:6]),
                    _mmd2_brute_force(x[4:7], y[6:9])])
    np.testing.assert_allclose(fid.kernel_inception_distance_blocks(x, y, max_block_size=3),
                               want, rtol=1e-10)


def test_kid_unbiased_for_equal_distributions_positive_otherwise():
    rng = np.random.default_rng(7)
    same, diff, biased = [], [], []
    for seed in range(40):
        x, y = rng.standard_normal((100, 16)), rng.standard_normal((100, 16))
        same.append(fid.kernel_inception_distance(x, y, num_subsets=2, max_subset_size=50,
                                                  seed=seed))
        diff.append(fid.kernel_inception_distance(x, y + 0.5, num_subsets=2,
                                                  max_subset_size=50, seed=seed))
        k = lambda a, b: (a @ b.T / 16 + 1) ** 3
        biased.append(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())
    se = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * se
    assert np.mean(biased) > 10 * se  # the V-statistic would be visibly off
    assert np.mean(diff) > 10 * se


# ------------------------------------------------------------------ Inception Score

def test_inception_score_uniform_is_one():
    np.testing.assert_allclose(fid.inception_score(np.zeros((50, 1008))), 1.0, rtol=1e-12)


@pytest.mark.parametrize("splits", [1, 10])
def test_inception_score_of_k_confident_classes_is_k(splits):
    k, n = 7, 700
    logits = np.full((n, 1008), -1e4)
    logits[np.arange(n), np.arange(n) % k] = 0.0  # every split uses the k classes equally
    np.testing.assert_allclose(fid.inception_score(logits, splits), k, rtol=1e-9)


def test_inception_score_rejects_bad_splits():
    with pytest.raises(InvalidInputError, match="splits"):
        fid.inception_score(np.zeros((5, 10)), splits=6)


# ------------------------------------------------------------------ reference statistics

def test_official_layout_loads_and_ours_round_trips(tmp_path):
    rng = np.random.default_rng(8)
    pools = rng.standard_normal((300, 4)).astype(np.float32)
    official = fid.stats_path(tmp_path, "cifar10")
    assert official.endswith("stats/cifar10_stats.npz")
    (tmp_path / "stats").mkdir()
    np.savez_compressed(official, pool_3=pools)  # what the official fid_stats mode writes
    loaded = fid.load_reference_stats(official)
    np.testing.assert_array_equal(loaded.pool_3, pools)
    np.testing.assert_allclose(loaded.sigma, np.cov(pools.astype(np.float64), rowvar=False),
                               rtol=1e-10)
    ours = tmp_path / "stats" / "mine_stats.npz"
    fid.save_reference_stats(ours, pools)
    again = fid.load_reference_stats(ours)
    np.testing.assert_array_equal(again.pool_3, pools)
    np.testing.assert_allclose(again.mu, pools.astype(np.float64).mean(0), rtol=1e-12)
    with np.load(ours) as data:
        assert {"pool_3", "mu", "sigma"} <= set(data.files)


def test_missing_stats_say_how_to_make_them(tmp_path):
    with pytest.raises(MissingFileError, match="fid_stats"):
        fid.load_reference_stats(tmp_path / "none_stats.npz")


# ------------------------------------------------------------------ digits feature network

@pytest.fixture(scope="module")
def train_stats():
    return digits_net.digits_reference_stats("train")


def test_shipped_digits_classifier_accuracy():
    images, labels = digits_net.digits_split("test")
    logits = digits_net.digits_outputs(images).logits
    assert logits.shape == (297, 10)
    assert np.mean(np.argmax(logits, 1) == labels) >= 0.95


def test_fd_digits_real_far_below_noise_and_blank(train_stats):
    test_images, labels = digits_net.digits_split("test")
    real = digits_net.digits_metrics(test_images, train_stats)
    rng = np.random.default_rng(9)
    noise = rng.integers(0, 256, test_images.shape, dtype=np.uint8)
    blank = np.zeros_like(test_images)
    fd_noise = digits_net.digits_metrics(noise, train_stats)["fd_digits"]
    fd_blank = digits_net.digits_metrics(blank, train_stats)["fd_digits"]
    assert real["fd_digits"] * 10 < min(fd_noise, fd_blank)
    # The class histogram of real digits is the label histogram up to the few errors.
    hist = np.array([real[f"class_{c}"] for c in range(10)])
    np.testing.assert_allclose(hist, np.bincount(labels, minlength=10) / len(labels), atol=0.02)
    assert 8.0 < real["is_digits"] <= 10.0


def test_digits_metrics_rejects_wrong_images(train_stats):
    with pytest.raises(InvalidInputError, match="8, 8, 1"):
        digits_net.digits_metrics(np.zeros((4, 32, 32, 3), np.uint8), train_stats)

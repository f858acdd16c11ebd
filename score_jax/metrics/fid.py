"""Sample-quality statistics on features: Fréchet distance, KID, Inception Score, feature moments.

All arithmetic is float64 numpy on the host: these run once per evaluation on [N, 2048] features,
and FID differences of 0.1 need more than float32's 7 digits in the covariance traces.
Reference statistics use the official score_sde layout, `assets/stats/<name>_stats.npz` with the
raw `pool_3` features [N, 2048] (the official `cifar10_stats.npz` loads as is); files written
here add `mu` [2048] and `sigma` [2048, 2048] so FID needs no pass over the features.
"""

from __future__ import annotations

import dataclasses
import os
from typing import NamedTuple

import numpy as np

from score_jax import paths, safe_files
from score_jax.errors import InvalidInputError, MissingFileError


def _check_features(name: str, x: np.ndarray, dim: int | None = None, min_rows: int = 1) -> None:
    """Raises InvalidInputError unless x is a finite [N >= min_rows, D] array (D = dim if given)."""
    if x.ndim != 2 or x.shape[0] < min_rows or (dim is not None and x.shape[1] != dim):
        want = f"[N >= {min_rows}, {dim if dim is not None else 'D'}]"
        raise InvalidInputError(f"{name}: got shape {x.shape}; expected features {want}")
    if not np.all(np.isfinite(x)):
        raise InvalidInputError(f"{name}: features contain NaN or inf (were the samples finite?)")


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix a [D, D] (float64).

    Eigen-decomposition; eigenvalues below 0 (round-off of a PSD matrix) are set to 0.
    """
    a = np.asarray(a, np.float64)
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance of N(mu1 [D], sigma1 [D, D]) and N(mu2, sigma2), in float64.

    |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), where tr (S1 S2)^(1/2) is computed as
    tr (S1^(1/2) S2 S1^(1/2))^(1/2): a symmetric PSD matrix with the same eigenvalues, so no
    complex round-off appears (scipy.linalg.sqrtm of S1 S2 can return imaginary parts).

    References:
      Heusel et al., GANs trained by a two time-scale update rule converge to a local Nash
      equilibrium, NeurIPS 2017; Dowson & Landau, J. Multivariate Anal. 1982.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    for name, arr, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d)),
                             ("sigma2", sigma2, (d, d))):
        if arr.shape != shape:
            raise InvalidInputError(f"{name}: got shape {arr.shape}; expected {shape}")
    root1 = sqrtm_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sum(np.sqrt(np.clip(eig, 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


@dataclasses.dataclass(frozen=True)
class FeatureStats:
    """Running first and second moments of features, so evaluation holds no image set.

    count: number of rows seen; total: sum of rows [D]; outer: sum of x x^T [D, D]; float64.
    """

    count: int
    total: np.ndarray  # [D]
    outer: np.ndarray  # [D, D]

    @classmethod
    def empty(cls, dim: int) -> FeatureStats:
        """No features yet, of dimension `dim`."""
        return cls(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))

    def update(self, features: np.ndarray) -> FeatureStats:
        """These statistics plus a batch of features [N, D]."""
        x = np.asarray(features, np.float64)
        _check_features("features", x, self.total.shape[0], min_rows=0)
        return FeatureStats(self.count + x.shape[0], self.total + x.sum(0), self.outer + x.T @ x)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Statistics of both sets of features (e.g. from two hosts or two rounds)."""
        if other.total.shape != self.total.shape:
            raise InvalidInputError(
                f"merge: dimensions differ ({self.total.shape[0]} vs {other.total.shape[0]})")
        return FeatureStats(self.count + other.count, self.total + other.total,
                            self.outer + other.outer)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """(mean [D], unbiased covariance [D, D]) as np.mean / np.cov(rowvar=False) give them."""
        if self.count < 2:
            raise InvalidInputError(f"mean_cov: needs at least 2 features, have {self.count}")
        mu = self.total / self.count
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, (cov + cov.T) / 2


def mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], unbiased covariance [D, D]) of features [N, D], float64."""
    x = np.asarray(features, np.float64)
    _check_features("features", x, min_rows=2)
    return FeatureStats.empty(x.shape[1]).update(x).mean_cov()


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of x [m, D] and y [n, D] with the kernel k(a, b) = (a.b / D + 1)^3."""
    d = x.shape[1]
    k_xx = (x @ x.T / d + 1.0) ** 3
    k_yy = (y @ y.T / d + 1.0) ** 3
    k_xy = (x @ y.T / d + 1.0) ** 3
    m, n = x.shape[0], y.shape[0]
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
                 + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1)) - 2.0 * k_xy.mean())


def _check_pair(feats1: np.ndarray, feats2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets as float64 [N >= 2, D] with one D."""
    x, y = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    _check_features("feats1", x, min_rows=2)
    _check_features("feats2", y, x.shape[1], min_rows=2)
    return x, y


def kernel_inception_distance(feats1: np.ndarray, feats2: np.ndarray, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> float:
    """KID of features [N1, D] and [N2, D]: unbiased MMD^2, cubic kernel, mean over subsets.

    As clean-fid: `num_subsets` times, m = min(N1, N2, max_subset_size) rows drawn without
    replacement from each set (numpy generator seeded with `seed`).

    References:
      Bińkowski et al., Demystifying MMD GANs, ICLR 2018.
    """
    x, y = _check_pair(feats1, feats2)
    if num_subsets < 1 or max_subset_size < 2:
        raise InvalidInputError(f"num_subsets={num_subsets}, max_subset_size={max_subset_size}: "
                                "expected num_subsets >= 1 and max_subset_size >= 2")
    m = min(x.shape[0], y.shape[0], max_subset_size)
    rng = np.random.default_rng(seed)
    estimates = [_mmd2_unbiased(x[rng.choice(x.shape[0], m, replace=False)],
                                y[rng.choice(y.shape[0], m, replace=False)])
                 for _ in range(num_subsets)]
    return float(np.mean(estimates))


def _blocks(x: np.ndarray, n_blocks: int) -> list[np.ndarray]:
    """x cut into n_blocks consecutive blocks, the one-row-larger blocks last (as TF-GAN)."""
    small, n_large = divmod(x.shape[0], n_blocks)
    sizes = [small] * (n_blocks - n_large) + [small + 1] * n_large
    return np.split(x, np.cumsum(sizes)[:-1])


def kernel_inception_distance_blocks(feats1: np.ndarray, feats2: np.ndarray,
                                     max_block_size: int = 1024) -> float:
    """KID as TF-GAN (hence the official score_sde): mean unbiased MMD^2 over disjoint blocks.

    Both sets are cut, in order, into the same number ceil(max(N1, N2) / max_block_size) of
    consecutive blocks whose sizes differ by at most one; no randomness.
    """
    x, y = _check_pair(feats1, feats2)
    n_blocks = -(-max(x.shape[0], y.shape[0]) // max_block_size)
    x_blocks, y_blocks = _blocks(x, n_blocks), _blocks(y, n_blocks)
    if min(len(b) for b in x_blocks + y_blocks) < 2:
        raise InvalidInputError(
            f"kernel_inception_distance_blocks: {x.shape[0]} and {y.shape[0]} features give "
            f"blocks of fewer than 2 rows with max_block_size={max_block_size}")
    return float(np.mean([_mmd2_unbiased(a, b) for a, b in zip(x_blocks, y_blocks)]))


def inception_score(logits: np.ndarray, splits: int = 1) -> float:
    """Inception Score of classifier logits [N, K]: exp E_x KL(p(y|x) || p(y)), mean over splits.

    The official score_sde passes all 1008 logits of all samples to TF-GAN's
    `classifier_score_from_logits`, i.e. one split over the whole set: `splits=1`, the default.
    `splits=10` is the convention of Salimans et al. (the mean of ten per-split scores).

    References:
      Salimans et al., Improved techniques for training GANs, NeurIPS 2016.
    """
    z = np.asarray(logits, np.float64)
    _check_features("logits", z, min_rows=1)
    if not 1 <= splits <= z.shape[0]:
        raise InvalidInputError(f"splits={splits}: expected 1 <= splits <= N = {z.shape[0]}")
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    scores = []
    for part in np.array_split(log_p, splits):
        p = np.exp(part)
        marginal = p.mean(axis=0)
        # Classes no sample uses have p = 0 and log p(y) = -inf: their terms are 0, not NaN.
        log_ratio = np.where(p > 0, part - np.log(np.where(marginal > 0, marginal, 1.0)), 0.0)
        scores.append(np.exp(np.sum(p * log_ratio, axis=1).mean()))
    return float(np.mean(scores))


class ReferenceStats(NamedTuple):
    """Reference statistics of a data set: raw features (may be None) and their moments."""

    pool_3: np.ndarray | None  # [N, D] float32, the official layout; needed for KID
    mu: np.ndarray  # [D] float64
    sigma: np.ndarray  # [D, D] float64


def stats_path(assets_dir: str | os.PathLike, name: str) -> str:
    """The official location of reference statistics: <assets_dir>/stats/<name>_stats.npz."""
    return os.path.join(os.fspath(assets_dir), "stats", f"{name}_stats.npz")


def save_reference_stats(path: str | os.PathLike, pool_3: np.ndarray) -> ReferenceStats:
    """Writes features [N, D] as `pool_3` (official layout) plus `mu`, `sigma`; returns them.

    Written whole (score_jax.paths; local or gs://), so a killed run leaves no half file.
    """
    feats = np.asarray(pool_3, np.float32)
    mu, sigma = mean_cov(feats)
    path = paths.resolve(path)
    paths.make_dir(path.parent)
    paths.save_npz(path, {"pool_3": feats, "mu": mu, "sigma": sigma}, compressed=True)
    return ReferenceStats(feats, mu, sigma)


def load_reference_stats(path: str | os.PathLike) -> ReferenceStats:
    """Reads reference statistics: an official `<name>_stats.npz` (pool_3 only) or one of ours.

    Raises:
      MissingFileError: no file at `path`.
      InvalidInputError: the file has neither `pool_3` nor `mu` and `sigma`.
    """
    if not paths.resolve(path).is_file():
        raise MissingFileError(
            f"reference statistics not found at {path!r}: compute them with "
            "`python main.py --mode fid_stats --config <config>` (or copy the official "
            "score_sde file, e.g. cifar10_stats.npz, there).")
    data = safe_files.load_npz(path, "reference statistics")
    pool_3 = data.get("pool_3")
    if "mu" in data and "sigma" in data:
        mu, sigma = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
        if mu.ndim != 1 or sigma.shape != mu.shape * 2:
            raise InvalidInputError(f"{path}: 'mu' {mu.shape} and 'sigma' {sigma.shape} are not a "
                                    f"mean [D] and a covariance [D, D]")
        return ReferenceStats(pool_3, mu, sigma)
    if pool_3 is None:
        raise InvalidInputError(f"{path}: expected key 'pool_3' (features [N, D]) or 'mu'/'sigma'")
    if pool_3.ndim != 2 or pool_3.shape[0] < 2:
        raise InvalidInputError(f"{path}: 'pool_3' has shape {pool_3.shape}; expected features "
                                f"[N, D] of at least 2 examples")
    mu, sigma = mean_cov(pool_3)
    return ReferenceStats(pool_3, mu, sigma)

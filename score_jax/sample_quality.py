"""Sample-quality scores of a config: which feature network, its reference statistics, the metrics.

`eval.sample_metrics` names the metrics. Each belongs to one feature network:
  - the FID Inception (weights: `eval.inception_weights`, or pytorch-fid's file fetched into the
    cache): 'fid', 'is', 'kid', 'precision', 'recall', against reference statistics in the
    official layout (`eval.stats_file`, default `assets/stats/<name>_stats.npz`, written by
    `--mode fid_stats`);
  - the shipped digits classifier (embedded data set only): 'fd_digits', 'is_digits',
    'precision_digits', 'recall_digits' and 'class_histogram' (fraction of samples per class,
    'class_0'..'class_9'), against the digits train split. These are not FID/IS and compare with
    nothing published.
Precision and recall are Kynkäänniemi et al.'s k-NN manifold estimates (k = 3) against the
reference features (`metrics/precision_recall.py`).
Features are computed per sampling round (`features`), so evaluation never holds the images at the
network's resolution; `scores` turns the features and logits of all rounds into the numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import ml_collections
import numpy as np

from score_jax.errors import InvalidInputError
from score_jax.metrics import digits_net, fid, precision_recall

METRICS = {"fid": "inception", "is": "inception", "kid": "inception",
           "precision": "inception", "recall": "inception",
           "fd_digits": "digits", "is_digits": "digits", "class_histogram": "digits",
           "precision_digits": "digits", "recall_digits": "digits"}
# Real features that precision/recall compare with, at most (a random subset, seeded): the k-NN
# radii cost O(N^2) distances.
MAX_PR_REFERENCE = 10000


@dataclasses.dataclass(frozen=True)
class Scorer:
    """A feature network and the reference statistics its metrics compare against."""

    net: str                                   # 'inception' or 'digits'
    names: tuple[str, ...]                     # the metrics to report
    # uint8 images [N, H, W, C] -> (features [N, D], logits [N, K])
    features: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    reference: fid.ReferenceStats


def stats_name(config: ml_collections.ConfigDict) -> str:
    """The official stats file name of the data set: 'cifar10', 'lsun_<category>_<size>', ...

    A folder's is 'folder_<key>_<size>', the key hashing its contents and data.eval_fraction.
    """
    d = config.data
    if d.dataset == "LSUN":
        return f"lsun_{d.category}_{d.image_size}"
    if d.dataset == "folder":  # one file per folder contents, split and resolution
        from score_jax import folder_data

        return f"{folder_data.stats_key(d.path, float(d.eval_fraction))}_{d.image_size}"
    return str(d.dataset).lower()


def stats_file(config: ml_collections.ConfigDict) -> str:
    """eval.stats_file, or the official location assets/stats/<name>_stats.npz."""
    return config.eval.stats_file or fid.stats_path("assets", stats_name(config))


def feature_net(config: ml_collections.ConfigDict) -> Optional[str]:
    """The network eval.sample_metrics needs ('inception' or 'digits'), None for no metric."""
    names = tuple(config.eval.sample_metrics)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise InvalidInputError(f"eval.sample_metrics: unknown metrics {unknown}; valid names are "
                                f"{sorted(METRICS)}.")
    nets = {METRICS[n] for n in names}
    if len(nets) > 1:
        raise InvalidInputError(f"eval.sample_metrics: {list(names)} mix the FID Inception's "
                                f"metrics (fid, is, kid) with the digits classifier's; pick one.")
    return nets.pop() if nets else None


def image_features(config: ml_collections.ConfigDict
                   ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(features, logits) of uint8 images [N, H, W, C] under the network of the config's metrics."""
    net = feature_net(config)
    if net == "digits":
        params = digits_net.load_params()
        return lambda x: tuple(digits_net.digits_outputs(x, params))
    from score_jax.metrics import inception, inception_weights
    e = config.eval
    path = inception_weights.weights_file(e.inception_weights, e.inception_url, e.inception_sha256)
    fn = inception.make_inception_fn(inception_weights.load_inception_params(path))
    return lambda x: tuple(inception.inception_features(fn, x))


def get_scorer(config: ml_collections.ConfigDict) -> Optional[Scorer]:
    """The scorer of eval.sample_metrics (None when it is empty); loads weights and references."""
    net = feature_net(config)
    if net is None:
        return None
    if net == "digits":
        if config.data.dataset != "digits":
            raise InvalidInputError(f"eval.sample_metrics: the digits classifier's metrics are for "
                                    f"the digits data set, not {config.data.dataset!r}; use "
                                    f"'fid', 'is', 'kid'.")
    if net == "digits" and not config.eval.stats_file:
        # Cheap enough to compute on the fly: 1500 digits through a small network.
        reference = digits_net.digits_reference_stats("train")
    else:
        reference = fid.load_reference_stats(stats_file(config))
    return Scorer(net, tuple(config.eval.sample_metrics), image_features(config), reference)


def scores(scorer: Scorer, features: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """The scorer's metrics of samples with these features [N, D] and logits [N, K]."""
    out: dict[str, float] = {}
    needs_moments = {"fid", "fd_digits"} & set(scorer.names)
    if needs_moments:
        mu, sigma = fid.mean_cov(features)
        distance = fid.frechet_distance(mu, sigma, scorer.reference.mu, scorer.reference.sigma)
        out.update({name: distance for name in needs_moments})
    for name in {"is", "is_digits"} & set(scorer.names):
        out[name] = fid.inception_score(logits)
    if "kid" in scorer.names:
        if scorer.reference.pool_3 is None:
            raise InvalidInputError("eval.sample_metrics: 'kid' needs the reference features "
                                    "(pool_3) in eval.stats_file, which holds only their moments; "
                                    "rewrite it with --mode fid_stats.")
        out["kid"] = fid.kernel_inception_distance_blocks(features, scorer.reference.pool_3)
    pr_names = {"precision", "recall", "precision_digits", "recall_digits"} & set(scorer.names)
    if pr_names:
        out.update(_precision_recall(scorer, features, pr_names))
    if "class_histogram" in scorer.names:
        counts = np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1])
        out.update({f"class_{c}": float(n / len(logits)) for c, n in enumerate(counts)})
    return out


def _precision_recall(scorer: Scorer, features: np.ndarray, names: set[str]) -> dict[str, float]:
    """Improved precision and recall (k = 3) of the samples' features against the reference's."""
    real = scorer.reference.pool_3
    if real is None:
        raise InvalidInputError("eval.sample_metrics: precision/recall need the reference features "
                                "(pool_3) in eval.stats_file, which holds only their moments; "
                                "rewrite it with --mode fid_stats.")
    if len(real) > MAX_PR_REFERENCE:
        real = real[np.random.default_rng(0).choice(len(real), MAX_PR_REFERENCE, replace=False)]
    p, r = precision_recall.precision_recall(real, features)
    return {name: p if name.startswith("precision") else r for name in names}


def score_samples(scorer: Scorer, samples: np.ndarray) -> dict[str, float]:
    """The scorer's metrics of uint8 samples [N, H, W, C] held in memory (snapshots)."""
    features, logits = scorer.features(samples)
    return scores(scorer, features, logits)


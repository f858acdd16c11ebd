"""`--mode fid_stats`: reference statistics of a data set split for the sample-quality metrics.

Every example of `eval.stats_split` (uint8 as stored, after the data set's official resizing; no
dequantisation, nothing dropped: the official pipeline dropped the last partial batch) goes
through the feature network of `eval.sample_metrics`; the features are written in the official
layout (`pool_3` [N, D], plus their mean and covariance) to `eval.stats_file` (default
`assets/stats/<name>_stats.npz`). With several processes each computes the features of its share
of every batch and writes them under the workdir; process 0 joins them in data-set order.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from score_jax import coordination, datasets, experiment, images, parallel, paths, reporting
from score_jax import safe_files
from score_jax import sample_quality
from score_jax import workdir as workdir_lib
from score_jax import workdir_lock
from score_jax.errors import InvalidInputError
from score_jax.metrics import fid


def _split(config: ml_collections.ConfigDict) -> str:
    split = config.eval.stats_split
    if split not in ("train", "test"):
        raise InvalidInputError(f"eval.stats_split: expected 'train' or 'test' (the data set's "
                                f"evaluation split), got {split!r}.")
    return "eval" if split == "test" else "train"


def fid_stats(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
              coordinator: Optional[coordination.Coordinator] = None) -> Optional[str]:
    """Write the reference statistics of config's data set; returns their path (process 0)."""
    coord = coordinator or coordination.Coordinator()
    if sample_quality.feature_net(config) is None:
        raise InvalidInputError("eval.sample_metrics is empty: name the metrics whose reference "
                                "statistics to compute, e.g. --config.eval.sample_metrics=fid,is.")
    features_fn = sample_quality.image_features(config)
    batch_size = int(config.eval.batch_size)
    split = _split(config)
    source = experiment.open_source(config, split)
    n_batches = datasets.num_eval_batches(len(source), batch_size)
    path = workdir_lib.prepare(workdir, barrier=coord.barrier) / "fid_stats"
    with workdir_lock.claim(path.parent, "fid_stats", mode="fid_stats"):
        if parallel.is_main_process():
            paths.make_dir(path)
        coord.barrier("fid_stats_dir")
        reporter = reporting.Reporter(enabled=parallel.is_main_process())
        parts, masks = [], []
        with reporter.progress(n_batches, desc=f"features ({split})", unit="batch") as bar:
            for batch in experiment.eval_iterator(config, seed=0, dequantize=False, split=split):
                feats, _ = features_fn(images.to_uint8(batch["image"]))
                parts.append(feats)
                masks.append(batch["mask"])
                bar.update(1)
        local = path / f"features_p{jax.process_index()}.npz"
        paths.save_npz(local, {"features": np.stack(parts), "mask": np.stack(masks)})
        coord.barrier("fid_stats_features")
        if not parallel.is_main_process():
            return None
        per_process = [safe_files.load_npz(path / f"features_p{p}.npz", "features")
                       for p in range(jax.process_count())]
        feats = np.concatenate([d["features"] for d in per_process], axis=1)  # [batches, B, D]
        mask = np.concatenate([d["mask"] for d in per_process], axis=1).astype(bool)
        out = sample_quality.stats_file(config)
        stats = fid.save_reference_stats(out, feats[mask])
        reporter.message(f"reference statistics of {stats.pool_3.shape[0]} {split} examples "
                         f"({sample_quality.feature_net(config)} features, {stats.pool_3.shape[1]}-d) "
                         f"-> {out}")
        return str(paths.resolve(out))

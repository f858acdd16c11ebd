"""Many samples, drawn in rounds by every process, kept on disk so that a killed run resumes.

Round r of `per_round` global samples is split over the processes; process p draws its share with
key fold_in(key, r * P + p) (for one process: fold_in(key, r)) and writes it, with the features
and logits of the quality network when there is one, to `<out_dir>/rounds/round_<r>_p<p>.npz`.
A rerun skips the rounds already on disk. Once all are written, process 0 reads them back in
order: the uint8 samples and the features (never the images at the network's resolution).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import numpy as np

from score_jax import coordination, images, paths, reporting, safe_files

# sample(key, n) -> (images [n, H, W, C] in [0, 1] on the host, nfe)
DrawFn = Callable[[jax.Array, int], tuple[np.ndarray, int]]
# uint8 images [N, H, W, C] -> (features [N, D], logits [N, K])
FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Drawn:
    """All rounds, on process 0: samples uint8 [N, H, W, C], features [N, D], logits [N, K]."""

    samples: np.ndarray
    features: Optional[np.ndarray]
    logits: Optional[np.ndarray]
    nfe: int  # score evaluations per sample of the sampler (the largest over rounds)


def _share(n: int, count: int, index: int) -> int:
    """Samples of a round of n that process `index` of `count` draws."""
    return n // count + (1 if index < n % count else 0)


def draw_rounds(draw: DrawFn, key: jax.Array, out_dir: paths.Path, *, total: int,
                per_round: int, coord: coordination.Coordinator, reporter: reporting.Reporter,
                features: Optional[FeatureFn] = None, desc: str = "samples") -> Optional[Drawn]:
    """Draw `total` samples in rounds of `per_round` over all processes; Drawn on process 0."""
    count, index = jax.process_count(), jax.process_index()
    rounds_dir = out_dir / "rounds"
    if index == 0:
        paths.make_dir(rounds_dir)
    coord.barrier(f"{desc}_dir")
    n_rounds = math.ceil(total / per_round)
    with reporter.progress(n_rounds, desc=desc, unit="round") as bar:
        for r in range(n_rounds):
            path = rounds_dir / f"round_{r}_p{index}.npz"
            n = _share(min(per_round, total - r * per_round), count, index)
            if n > 0 and not path.exists():
                x, nfe = draw(jax.random.fold_in(key, r * count + index), n)
                arrays = {"samples": images.to_uint8(x), "nfe": nfe}
                if features is not None:
                    arrays["features"], arrays["logits"] = features(arrays["samples"])
                paths.save_npz(path, arrays)
            bar.update(1)
    coord.barrier(f"{desc}_written")
    if index != 0:
        return None
    parts: dict[str, list] = {"samples": [], "features": [], "logits": [], "nfe": []}
    for r in range(n_rounds):
        for p in range(count):
            # Which files exist follows from the shares, not from a listing: a bucket client's
            # cached listing could miss a file another process has just written.
            if _share(min(per_round, total - r * per_round), count, p) == 0:
                continue
            path = rounds_dir / f"round_{r}_p{p}.npz"
            for name, value in safe_files.load_npz(path, "sample round").items():
                parts[name].append(value)
    cat = lambda name: np.concatenate(parts[name]) if parts[name] else None  # noqa: E731
    return Drawn(cat("samples"), cat("features"), cat("logits"),
                 max(int(v) for v in parts["nfe"]))

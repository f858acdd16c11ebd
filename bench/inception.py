"""FID Inception throughput (images/s) and digits-classifier feature time, measured side by side.

Both networks run on uint8 images through the same jitted functions evaluation uses: Inception
on CIFAR-sized 32x32x3 images (bilinear resize to 299 included) at batch 50 and batch 10, the
digits classifier on 1000 8x8 images. Each side is compiled and warmed up first, then the sides
are alternated call by call for `--repeats` rounds; the medians are printed, and the ratio of
per-image Inception time at batch 10 to batch 50. Weights are random ones (the cost does
not depend on their values) unless --weights names a real file.

Usage: python bench/inception.py [--repeats 3] [--weights pt_inception-2015-12-05-6726825d.pth]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from score_jax.metrics import digits_net, inception, inception_weights  # noqa: E402
from score_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # score_jax's XLA:CPU kernels, as main.py uses them


def random_variables() -> dict:
    """Inception variables of the right shapes from Flax's initialisers (the cost is value-free)."""
    x = np.zeros((1, inception.INCEPTION_SIZE, inception.INCEPTION_SIZE, 3), np.float32)
    return jax.jit(inception.FIDInception().init)(jax.random.PRNGKey(0), x)


def timed(fn, x) -> float:
    """Wall seconds of one call, waiting for the result."""
    start = time.perf_counter()
    jax.block_until_ready(fn(x))
    return time.perf_counter() - start


def main() -> None:
    """Measures and prints the medians and the batch-size ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weights", default=None)
    args = parser.parse_args()
    variables = (inception_weights.load_inception_params(args.weights) if args.weights
                 else random_variables())
    inception_fn = inception.make_inception_fn(variables)
    digits_fn = digits_net.make_digits_fn(digits_net.load_params())
    rng = np.random.default_rng(0)
    sides = {
        "inception b50": (inception_fn, rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)),
        "inception b10": (inception_fn, rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)),
        "digits b1000": (digits_fn, rng.integers(0, 256, (1000, 8, 8, 1), dtype=np.uint8)),
    }
    for fn, x in sides.values():  # compile and warm up
        timed(fn, x)
        timed(fn, x)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):
        for name, (fn, x) in sides.items():
            times[name].append(timed(fn, x))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"backend {jax.default_backend()}, {os.cpu_count()} CPUs visible, "
          f"load average {os.getloadavg()[0]:.1f} (machine shared with other jobs)")
    for name, (_, x) in sides.items():
        print(f"{name}: median {med[name]:.3f} s per call, {len(x) / med[name]:.1f} images/s "
              f"(all: {', '.join(f'{t:.3f}' for t in times[name])})")
    print(f"digits features: {med['digits b1000'] * 1000:.1f} ms per 1000 samples")
    ratio = (med["inception b10"] / 10) / (med["inception b50"] / 50)
    print(f"ratio per-image time batch 10 / batch 50: {ratio:.2f}")


if __name__ == "__main__":
    main()

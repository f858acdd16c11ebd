"""Training throughput of the default config on CPU, side by side in one run.

  python bench/train.py [--steps 100] [--ckpt_steps 300]

1. steps/s and images/s of the default config (digits DDPM++, batch 64), data pipeline included,
   on 1 CPU device vs 8 forced host devices (XLA_FLAGS=--xla_force_host_platform_device_count=8),
   each in its own subprocess; ratio = overhead of splitting the same global batch 8 ways.
2. Cost of checkpointing: the real training loop (train.train) without preemption checkpoints,
   with the default frequency, and with one every 10 steps; wall time of the loop, ratio to none.
Snapshot sampling is off in part 2 (it is not checkpointing). Timings on a shared machine are noisy:
each configuration is measured twice, alternating, and the faster kept.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]

THROUGHPUT = r"""
import json, sys, time
import jax, numpy as np
from configs.vp import digits_ddpmpp_continuous as c
from score_jax import datasets, experiment, parallel, train, xla_cpu
xla_cpu.configure()
steps = int(sys.argv[1])
config = c.get_config()
setup = experiment.build(config)
mesh = parallel.make_mesh()
state = parallel.replicate(experiment.init_state(config, setup), mesh)
single = train.compile_steps(config, setup, mesh, 1).single
bs = config.training.batch_size
it = datasets.train_iterator("digits", image_size=8, global_batch_size=bs, seed=0,
                             random_flip=False, prefetch=2)
scaler = datasets.get_data_scaler(True)
for _ in range(5):  # compile and warm up
    state, m = single(state, parallel.global_batch(scaler(next(it)["image"]), mesh))
jax.block_until_ready(m)
best = 0.0
for rep in range(2):
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = single(state, parallel.global_batch(scaler(next(it)["image"]), mesh))
        float(m["loss"])  # the runner reads the loss every call
    best = max(best, steps / (time.perf_counter() - t0))
it.close()
print(json.dumps({"devices": jax.device_count(), "steps_per_s": best, "images_per_s": best * bs}))
"""

CKPT = r"""
import json, sys, time
import jax
from configs.vp import digits_ddpmpp_continuous as c
from score_jax import train, xla_cpu
xla_cpu.configure()
steps, preempt, workdir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
config = c.get_config()
with config.unlocked():
    config.training.n_iters = steps
    config.training.snapshot_freq = steps
    config.training.snapshot_freq_for_preemption = preempt
    config.training.snapshot_sampling = False
    config.training.log_freq = 50
t0 = time.perf_counter()
train.train(config, workdir)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def _run(script: str, args: list, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, cwd=ROOT,
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per throughput run")
    parser.add_argument("--ckpt_steps", type=int, default=300, help="steps per checkpoint run")
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_train_"))
    base = dict(os.environ, JAX_PLATFORMS="cpu",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                JAX_COMPILATION_CACHE_DIR=str(tmp / "jax_cache"),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    base.pop("XLA_FLAGS", None)
    print(f"[bench/train] CPU, {os.cpu_count()} cores; default config (digits DDPM++, batch 64)")

    one = _run(THROUGHPUT, [args.steps], base)
    eight = _run(THROUGHPUT, [args.steps],
                 dict(base, XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    for r in (one, eight):
        print(f"  {r['devices']} device(s): {r['steps_per_s']:.2f} steps/s, "
              f"{r['images_per_s']:.0f} images/s")
    print(f"  8 forced devices / 1 device, steps/s ratio: "
          f"{eight['steps_per_s'] / one['steps_per_s']:.3f}")

    n = args.ckpt_steps
    settings = {"none": n, "default (every 100)": 100, "every 10": 10}
    best = {k: float("inf") for k in settings}
    _run(CKPT, [20, 20, tmp / "warm"], base)  # fills the compilation cache
    for rep in range(2):
        for name, freq in settings.items():
            r = _run(CKPT, [n, freq, tmp / f"ck_{rep}_{freq}"], base)
            best[name] = min(best[name], r["seconds"])
    print(f"  checkpointing, {n} training steps (train.train wall time, compile cached):")
    for name, secs in best.items():
        print(f"    preemption checkpoints {name:>20}: {secs:6.1f} s, ratio to none "
              f"{secs / best['none']:.3f}")


if __name__ == "__main__":
    main()

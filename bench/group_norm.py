"""score_jax's GroupNorm (score_jax/models/cpu/group_norm.py) against flax.linen.GroupNorm, side by side.

  python bench/group_norm.py [--configs digits,cifar10] [--rounds 3] [--steps 2] [--layer_only]

Two measurements in one process, each with interleaved repeats and medians:
  1. the layer: GroupNorm + swish forward and backward at [8, 32, 32, 128] (32 groups), the size of
     CIFAR-10 DDPM++'s first resolution;
  2. whole train steps (bench/train_step.py's `config_train_step`: loss, gradient, clipping, Adam,
     EMA) of each config, built once with score_jax's layer and once with flax's (the models look
     the layer up as score_jax.models.cpu.GroupNorm at trace time), compiled with score_jax's XLA:CPU
     flags. It also prints the largest parameter difference after one step of each from the same
     state, which float rounding alone explains.
Ratios are ours / flax time (< 1: ours faster). Configs: 'digits' = configs/vp/digits_ddpmpp_continuous
at batch 64, 'cifar10' = configs/vp/cifar10_ddpmpp_continuous at batch 8.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_step import config_train_step  # noqa: E402  (applies score_jax's XLA:CPU defaults)

from score_jax.models import cpu  # noqa: E402

CONFIGS = {"digits": ("configs.vp.digits_ddpmpp_continuous", 64),
           "cifar10": ("configs.vp.cifar10_ddpmpp_continuous", 8)}
LAYERS = {"score_jax": cpu.GroupNorm, "flax": nn.GroupNorm}


def _alternate(fns: dict, rounds: int, steps: int) -> dict[str, float]:
    """Median seconds per call of each zero-argument fn, the fns alternating in order."""
    times = {name: [] for name in fns}
    for r in range(rounds):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            for _ in range(steps):
                start = time.perf_counter()
                jax.block_until_ready(fns[name]())
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def layer(rounds: int) -> None:
    """GroupNorm + swish forward and backward at [8, 32, 32, 128]."""
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 128))
    w = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    fns = {}
    for name, cls in LAYERS.items():
        norm = cls(num_groups=32)
        params = norm.init(jax.random.PRNGKey(2), x)
        grad = jax.jit(jax.grad(lambda p, x: jnp.sum(nn.swish(norm.apply(p, x)) * w), (0, 1)))
        jax.block_until_ready(grad(params, x))
        fns[name] = lambda grad=grad, params=params: grad(params, x)
    med = _alternate(fns, rounds * 3, 5)
    print(f"layer [8, 32, 32, 128], 32 groups, forward + backward: score_jax "
          f"{1e3 * med['score_jax']:.2f} ms, flax {1e3 * med['flax']:.2f} ms, ratio "
          f"{med['score_jax'] / med['flax']:.3f}", flush=True)


def train_step(name: str, rounds: int, steps: int) -> None:
    """The config's train step with each layer."""
    module, batch = CONFIGS[name]
    compiled, outputs = {}, {}
    for layer_name, cls in LAYERS.items():
        cpu.GroupNorm = cls  # layerspp.group_norm reads it at each call
        step, state, x = config_train_step(module, batch)
        start = time.perf_counter()
        compiled[layer_name] = jax.jit(step).lower(state, x).compile()
        print(f"  {name} with {layer_name}'s GroupNorm: compiled in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        outputs[layer_name] = compiled[layer_name](state, x)
    cpu.GroupNorm = LAYERS["score_jax"]
    diff = max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: float(jnp.max(jnp.abs(a - b))), outputs["score_jax"][0].params,
        outputs["flax"][0].params)))
    med = _alternate({k: (lambda f=f: f(state, x)) for k, f in compiled.items()}, rounds, steps)
    print(f"{module}, batch {batch}: score_jax {med['score_jax']:.4f} s/step, flax "
          f"{med['flax']:.4f} s/step, ratio {med['score_jax'] / med['flax']:.3f}; losses "
          f"{float(outputs['score_jax'][1]['loss']):.6f} / {float(outputs['flax'][1]['loss']):.6f}, "
          f"largest parameter difference after one step {diff:.2e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="digits,cifar10")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--layer_only", action="store_true")
    args = parser.parse_args()
    print(f"[bench/group_norm] {jax.devices()[0].device_kind}, {jax.device_count()} device(s)")
    layer(args.rounds)
    if not args.layer_only:
        for name in args.configs.split(","):
            train_step(name, args.rounds, args.steps if name == "cifar10" else 5 * args.steps)


if __name__ == "__main__":
    main()

"""Train-step throughput: n steps scanned in one compiled call vs one jitted step per Python call.

Both variants run the same score_jax train step (VP continuous DSM, Adam with clipping and EMA) on a
small convolutional flax model, measured side by side in one process with interleaved repeats so
machine load affects both alike. The last line is the ratio of time per step, scanned / looped
(> 1 means the scan is slower; on XLA:CPU convolution gradients inside a compiled loop are known
to be slow, see DESIGN.md).

Usage: python bench/train_step.py [--batch 32] [--size 32] [--n_jitted_steps 5] [--repeats 3]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from score_jax import losses, optim  # noqa: E402
from score_jax import sde as sde_lib  # noqa: E402
from score_jax import train_state as ts  # noqa: E402


class SmallConvNet(nn.Module):
    """Three 3x3 convolutions with a time embedding added after the first (noise prediction)."""

    features: int = 32

    @nn.compact
    def __call__(self, x, labels, train=False):
        t = (labels / 999.0).astype(x.dtype)[:, None]
        emb = nn.Dense(self.features)(jnp.concatenate([jnp.sin(6 * t), jnp.cos(6 * t)], axis=1))
        h = nn.swish(nn.Conv(self.features, (3, 3))(x) + emb[:, None, None, :])
        h = nn.swish(nn.Conv(self.features, (3, 3))(h))
        return nn.Conv(x.shape[-1], (3, 3))(h)


def build(batch: int, size: int, n: int):
    """Initial state, jitted single step, jitted n-step scan, and n batches [n, B, H, W, 3]."""
    model = SmallConvNet()
    shape = (size, size, 3)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape), jnp.zeros((1,)))["params"]
    optimizer = optim.get_optimizer("Adam", lr=2e-4, warmup=5000, grad_clip=1.0)
    loss_fn = losses.get_loss_fn(sde_lib.VPSDE(), model.apply, train=True, reduce_mean=True,
                                 continuous=True, data_shape=shape)
    step = ts.make_train_step(loss_fn, optimizer, ema_rate=0.9999)
    state = ts.init_train_state(jax.random.PRNGKey(1), params, optimizer)
    xs = jax.random.normal(jax.random.PRNGKey(2), (n, batch) + shape)
    return state, jax.jit(step, donate_argnums=0), jax.jit(ts.make_multi_step(step, n),
                                                            donate_argnums=0), xs


def time_looped(step, state, xs):
    start = time.perf_counter()
    for x in xs:
        state, metrics = step(state, x)
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start, state


def time_scanned(multi, state, xs):
    start = time.perf_counter()
    state, metrics = multi(state, xs)
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--n_jitted_steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.n_jitted_steps
    state, step, multi, xs = build(args.batch, args.size, n)
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), batch {args.batch}, "
          f"{args.size}x{args.size}x3, n_jitted_steps {n}, repeats {args.repeats}")

    start = time.perf_counter()
    _, state = time_looped(step, state, xs)
    print(f"compile + first run, looped:  {time.perf_counter() - start:.2f} s")
    start = time.perf_counter()
    _, state = time_scanned(multi, state, xs)
    print(f"compile + first run, scanned: {time.perf_counter() - start:.2f} s")

    looped, scanned = [], []
    for r in range(args.repeats):
        # Alternate which variant goes first, so drifting load does not favour one of them.
        order = ("looped", "scanned") if r % 2 == 0 else ("scanned", "looped")
        for name in order:
            if name == "looped":
                seconds, state = time_looped(step, state, xs)
                looped.append(seconds / n)
            else:
                seconds, state = time_scanned(multi, state, xs)
                scanned.append(seconds / n)
    for name, times in (("looped ", looped), ("scanned", scanned)):
        med = statistics.median(times)
        print(f"{name}: {med * 1e3:8.1f} ms/step (min {min(times) * 1e3:.1f}, max "
              f"{max(times) * 1e3:.1f}), {args.batch / med:8.1f} images/s")
    ratio = statistics.median(scanned) / statistics.median(looped)
    print(f"ratio scanned/looped time per step: {ratio:.2f}")


if __name__ == "__main__":
    main()

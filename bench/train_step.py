"""Train-step throughput: n steps scanned in one compiled call vs one jitted step per Python call.

Both variants run the same score_jax train step (VP continuous DSM, Adam with clipping and EMA) on a
small convolutional flax model, or with `--config` on a config's own model, optimiser and EMA
(e.g. configs.vp.cifar10_ddpmpp_continuous, the network of the paper), measured side by side in
one process with interleaved repeats so
machine load affects both alike. The last line is the ratio of time per step, scanned / looped
(> 1 means the scan is slower; on XLA:CPU convolution gradients inside a compiled loop are known
to be slow, see DESIGN.md).

Usage: python bench/train_step.py [--batch 32] [--size 32] [--n_jitted_steps 5] [--repeats 3]
       [--config configs.vp.cifar10_ddpmpp_continuous]   (then --size is the config's)
"""

from __future__ import annotations

import argparse
import importlib
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
from score_jax.models import registry  # noqa: E402
from score_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # score_jax's XLA:CPU kernels, as main.py uses them


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


def load_config(config_module: str, overrides: dict | None = None):
    """`config_module`'s config with {"section.field": value} overrides applied."""
    config = importlib.import_module(config_module).get_config()
    for path, value in (overrides or {}).items():
        section, field = path.split(".")
        config[section][field] = value
    return config


def config_train_step(config_module: str, batch: int, overrides: dict | None = None):
    """A config's train step (unjitted), its step-0 state and one batch [B, H, W, C] in [-1, 1].

    Built from train_state, losses, optim and the registry (as train.py does), with config.seed;
    `overrides` ({"model.nf": 32}) change fields of the config first.
    """
    config = load_config(config_module, overrides)
    m, o, t, d = config.model, config.optim, config.training, config.data
    sdes = {"vpsde": sde_lib.VPSDE, "subvpsde": sde_lib.SubVPSDE}
    sde = sdes[t.sde.lower()](beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
    model = registry.get_model(config)
    optimizer = optim.get_optimizer(o.optimizer, lr=o.lr, beta1=o.beta1, eps=o.eps,
                                    weight_decay=o.weight_decay, warmup=o.warmup,
                                    grad_clip=o.grad_clip)
    shape = (d.image_size, d.image_size, d.num_channels)
    loss_fn = losses.get_loss_fn(sde, model.apply, train=True, reduce_mean=t.reduce_mean,
                                 continuous=t.continuous,
                                 likelihood_weighting=t.likelihood_weighting, data_shape=shape)
    step = ts.make_train_step(loss_fn, optimizer, ema_rate=m.ema_rate)

    def init() -> ts.TrainState:
        key, init_key = jax.random.split(jax.random.PRNGKey(config.seed))
        variables = dict(registry.init_model(init_key, model, d.image_size, d.num_channels))
        params = variables.pop("params")
        return ts.init_train_state(key, params, optimizer, model_state=variables)

    x = jax.random.uniform(jax.random.PRNGKey(1), (batch,) + shape, minval=-1.0, maxval=1.0)
    return step, jax.jit(init)(), x


def build(batch: int, size: int, n: int, config_module: str = ""):
    """Initial state, jitted single step, jitted n-step scan, and n batches [n, B, H, W, C]."""
    if config_module:
        step, state, x = config_train_step(config_module, batch)
        xs = jnp.stack([x] * n)
    else:
        model = SmallConvNet()
        shape = (size, size, 3)
        params = model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + shape),
                            jnp.zeros((1,)))["params"]
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
    parser.add_argument("--config", default="", help="a config module, e.g. "
                        "configs.vp.cifar10_ddpmpp_continuous (default: a small conv net)")
    args = parser.parse_args()
    n = args.n_jitted_steps
    state, step, multi, xs = build(args.batch, args.size, n, args.config)
    what = args.config or f"small conv net {args.size}x{args.size}x3"
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), batch {args.batch}, "
          f"{what}, n_jitted_steps {n}, repeats {args.repeats}")

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
              f"{max(times) * 1e3:.1f}), {1 / med:7.2f} steps/s, {args.batch / med:8.1f} images/s")
    ratio = statistics.median(scanned) / statistics.median(looped)
    print(f"ratio scanned/looped time per step: {ratio:.2f}")


if __name__ == "__main__":
    main()

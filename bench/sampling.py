"""Sampling speed and NFE: score_jax PC and probability-flow ODE samplers on a small conv network.

The network is a three-convolution flax model with random weights on 32x32x3 images (batch 8),
wrapped by `models.score.get_score_fn` (VP, continuous). Measured side by side in one run:
  - the PC sampler (reverse diffusion + Langevin, one compiled loop): compile + first call, then
    steady-state wall time, NFE and time per score evaluation;
  - the ODE sampler (diffrax dopri5, one compiled program) at rtol = atol = 1e-3, 1e-4, 1e-5,
    against the official score_sde design: scipy `solve_ivp(method='RK45')` on the host calling a
    jitted drift once per evaluation (same network, prior draw and tolerances).

Usage: PYTHONPATH=. python bench/sampling.py [--batch 8] [--num-scales 1000] [--repeats 2]
The last line printed is the ODE speed ratio official / ours at 1e-5.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax.models import score as score_lib
from score_jax import xla_cpu

xla_cpu.configure()  # score_jax's XLA:CPU kernels, as main.py uses them


class SmallConvNet(nn.Module):
    """Three 3x3 convolutions with a sinusoidal time embedding added after the first."""

    channels: int = 32

    @nn.compact
    def __call__(self, x, labels, train: bool = False):
        freqs = jnp.exp(jnp.linspace(0.0, 4.0, 16))[None]
        emb = labels[:, None] / 1000.0 * freqs
        emb = nn.Dense(self.channels)(jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1))
        h = nn.silu(nn.Conv(self.channels, (3, 3))(x) + emb[:, None, None, :])
        h = nn.silu(nn.Conv(self.channels, (3, 3))(h))
        return nn.Conv(x.shape[-1], (3, 3))(h)


def _timed(fn, repeats: int):
    """(first-call seconds incl. compile, best steady-state seconds, last result)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return first, best, out


def official_ode_sample(sde, score_fn, drift, z, *, rtol, atol, eps=1e-3):
    """The official design: scipy RK45 on the host, one jitted drift(x, t) call per evaluation."""
    shape = z.shape

    def ode_func(t, y):
        x = jnp.asarray(y, jnp.float32).reshape(shape)
        return np.asarray(drift(x, jnp.full(shape[:1], t, jnp.float32))).reshape(-1)

    sol = integrate.solve_ivp(ode_func, (sde.T, eps), np.asarray(z).reshape(-1), rtol=rtol,
                              atol=atol, method="RK45")
    x = jnp.asarray(sol.y[:, -1], jnp.float32).reshape(shape)
    t = jnp.full(shape[:1], eps, jnp.float32)
    _, x = sampling.reverse_diffusion(jax.random.PRNGKey(0), sde, score_fn, x, t)  # denoise
    return x, sol.nfev + 1


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-scales", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    sde = sde_lib.VPSDE(N=args.num_scales)
    shape = (args.batch, 32, 32, 3)
    model = SmallConvNet()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(shape[:1]))["params"]
    score_fn = score_lib.get_score_fn(sde, model.apply, params, continuous=True)
    print(f"device {jax.devices()[0].platform}, batch {args.batch}, 32x32x3, VP N={sde.N}, "
          f"{sum(p.size for p in jax.tree.leaves(params))} params")

    key = jax.random.PRNGKey(1)
    first, best, (x, nfe) = _timed(lambda: sampling.pc_sample(key, sde, score_fn, shape), args.repeats)
    print(f"pc  reverse_diffusion+langevin  nfe {nfe:5d}  first {first:7.2f} s  "
          f"steady {best:7.2f} s  {1e3 * best / nfe:.2f} ms/eval  finite {bool(jnp.isfinite(x).all())}")

    z = sde.prior_sampling(jax.random.split(key)[0], shape)  # ode_sample's own prior draw
    drift = jax.jit(lambda x, t: sde.reverse(score_fn, probability_flow=True).sde(x, t)[0])
    jax.block_until_ready(drift(z, jnp.ones(shape[:1])))  # compile outside the timing
    ratio = None
    for tol in (1e-3, 1e-4, 1e-5):
        first, best, (x, nfe) = _timed(
            lambda: sampling.ode_sample(key, sde, score_fn, shape, rtol=tol, atol=tol), args.repeats)
        start = time.perf_counter()
        x_off, nfe_off = official_ode_sample(sde, score_fn, drift, z, rtol=tol, atol=tol)
        official = time.perf_counter() - start
        diff = float(jnp.abs(x - x_off).max() / jnp.abs(x_off).max())
        ratio = official / best
        print(f"ode tol {tol:.0e}  ours: nfe {nfe:4d}  first {first:6.2f} s  steady {best:6.2f} s  "
              f"| official scipy RK45: nfe {nfe_off:4d}  {official:6.2f} s  "
              f"| max|diff|/max|x| {diff:.0e}  ratio {ratio:.2f}")
    print(f"ODE speed ratio official / ours at tol 1e-5: {ratio:.2f}")


if __name__ == "__main__":
    main()

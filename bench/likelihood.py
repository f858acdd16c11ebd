"""Bits/dim speed: score_jax.likelihood.bpd versus the official score_sde design, side by side.

The official `likelihood.get_likelihood_fn` integrates the probability-flow ODE with scipy
`solve_ivp(method='RK45')` on the host over the flattened float64 batch, and at every evaluation
calls a jitted drift and, separately, a jitted Hutchinson divergence (which recomputes the drift
inside its gradient). Rebuilt here with the same network, data, Hutchinson noise, rtol and atol.
The official design keeps scipy's RMS error norm over all components; ours controls the
log-density apart (score_jax.likelihood, "Error control"), so it takes more steps and max|delta bpd|
is mostly the official design's truncation error.

`error_control='rms'` gives score_jax the official semantics (same steps, fewer evaluations).
With `--reference TOL` every choice is also compared with a tight solve at rtol = atol = TOL
(score_jax, stepped, per-part norm): max|delta bpd| vs that reference, the truncation error.

Usage (repository root): PYTHONPATH=. python bench/likelihood.py [--repeats 3] [--with-diffeqsolve]
       [--batch 8] [--channels 32] [--tol 1e-5] [--reference 1e-7]
The last lines printed are the speed ratios official / ours, for each error control.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from scipy import integrate

from score_jax import likelihood
from score_jax import sde as sde_lib
from score_jax.models import score as score_lib
from score_jax import xla_cpu

xla_cpu.configure()  # score_jax's XLA:CPU kernels, as main.py uses them


class SmallConvNet(nn.Module):
    """Three 3x3 convolutions with a time embedding added after the first (random weights)."""

    channels: int = 32

    @nn.compact
    def __call__(self, x, labels, train: bool = False):
        emb = jnp.log1p(labels)[:, None] * jnp.linspace(0.1, 3.0, 16)[None]
        emb = nn.Dense(self.channels)(jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], axis=-1))
        h = nn.Conv(self.channels, (3, 3))(x)
        h = nn.silu(h + emb[:, None, None, :])
        h = nn.silu(nn.Conv(self.channels, (3, 3))(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.normal(1e-2))(h)


def dequantised_batch(batch: int, size: int = 32) -> np.ndarray:
    """Uniformly dequantised random 8-bit images mapped to [-1, 1], [B, size, size, 3]."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch, size, size, 3))
    return (2.0 * (pixels + rng.random(pixels.shape)) / 256.0 - 1.0).astype(np.float32)


def official_bpd(sde, score_fn, x, noise, *, rtol, atol, eps, offset):
    """The official design: scipy RK45 on the host, jitted drift + separately jitted divergence."""
    shape, batch = x.shape, x.shape[0]

    @jax.jit
    def drift_fn(score_fn, x, t):
        return sde.reverse(score_fn, probability_flow=True).sde(x, t)[0]

    @jax.jit
    def div_fn(score_fn, x, t, noise):
        grad = jax.grad(lambda d: jnp.sum(drift_fn(score_fn, d, t) * noise))(x)
        return jnp.sum(grad * noise, axis=tuple(range(1, x.ndim)))

    def ode_func(t, y):
        sample = jnp.asarray(y[:-batch].reshape(shape), jnp.float32)
        vec_t = jnp.ones((batch,), jnp.float32) * t
        drift = np.asarray(drift_fn(score_fn, sample, vec_t)).reshape(-1)
        logp_grad = np.asarray(div_fn(score_fn, sample, vec_t, noise)).reshape(-1)
        return np.concatenate([drift, logp_grad], axis=0)

    init = np.concatenate([np.asarray(x, np.float64).reshape(-1), np.zeros(batch)])
    sol = integrate.solve_ivp(ode_func, (eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    z = jnp.asarray(sol.y[:-batch, -1].reshape(shape), jnp.float32)
    delta_logp = sol.y[-batch:, -1]
    bits = -(np.asarray(sde.prior_logp(z)) + delta_logp) / math.log(2) / math.prod(shape[1:])
    return bits + offset, sol.nfev


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=32, help="width of the conv net")
    parser.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of every solve")
    parser.add_argument("--reference", type=float, default=0.0,
                        help="tolerance of a reference solve to measure truncation errors")
    parser.add_argument("--with-diffeqsolve", action="store_true",
                        help="also time method='diffeqsolve' (slow on CPU: the known trap)")
    args = parser.parse_args()

    sde = sde_lib.VPSDE()
    x = jnp.asarray(dequantised_batch(args.batch))
    model = SmallConvNet(args.channels)
    params = model.init(jax.random.PRNGKey(0), x[:1], jnp.zeros((1,)))["params"]
    score_fn = score_lib.get_score_fn(sde, model.apply, params, {}, continuous=True)
    key = jax.random.PRNGKey(1)
    noise = jax.random.rademacher(key, x.shape, dtype=x.dtype)  # what bpd draws from `key`
    tol = dict(rtol=args.tol, atol=args.tol, eps=1e-5)
    offset = 7.0  # centred data: log2(1/2) + 8

    auto = likelihood.resolve_method("auto")
    runs = {f"ours (auto={auto})":
            lambda: likelihood.bpd(key, sde, score_fn, x, centered=True, **tol),
            f"ours (auto={auto}, rms)": lambda: likelihood.bpd(
                key, sde, score_fn, x, centered=True, error_control="rms", **tol),
            "official": lambda: official_bpd(sde, score_fn, x, noise, offset=offset, **tol)}
    if args.with_diffeqsolve:
        runs["ours (diffeqsolve)"] = lambda: likelihood.bpd(
            key, sde, score_fn, x, centered=True, method="diffeqsolve", **tol)
    results, times = {}, {name: [] for name in runs}
    for name, fn in runs.items():  # compile / warm up
        results[name] = fn()
    for _ in range(args.repeats):  # interleaved, so load changes hit every contender alike
        for name, fn in runs.items():
            seconds, results[name] = _timed(fn)
            times[name].append(seconds)

    official_bits, official_nfe = results["official"]
    reference = None
    if args.reference:
        ref = likelihood.bpd(key, sde, score_fn, x, centered=True, method="stepped",
                             rtol=args.reference, atol=args.reference, eps=1e-5, max_steps=100000)
        reference = np.asarray(ref.bpd)
        print(f"reference: score_jax stepped, per-part norm, rtol = atol = {args.reference:.0e}, "
              f"nfe {ref.nfe}, mean bpd {float(np.mean(reference)):.6f}")
    print(f"batch {args.batch} x 32x32x3, conv net width {args.channels}, VP, rtol = atol = "
          f"{args.tol:.0e}")
    for name in runs:
        bits, nfe = results[name][0], results[name][-1]
        delta = np.max(np.abs(np.asarray(bits) - np.asarray(official_bits)))
        vs_ref = ("" if reference is None else
                  f"  max|delta bpd| vs ref {np.max(np.abs(np.asarray(bits) - reference)):.2e}")
        print(f"{name:24s} median {statistics.median(times[name]):7.3f} s  "
              f"(all {', '.join(f'{s:.3f}' for s in times[name])})  nfe {nfe:4d}  "
              f"mean bpd {float(np.mean(np.asarray(bits))):.5f}  vs official {delta:.2e}{vs_ref}")
    for name in runs:
        if name != "official":
            ratio = statistics.median(times["official"]) / statistics.median(times[name])
            print(f"speed ratio official/{name}: {ratio:.2f}x")

if __name__ == "__main__":
    main()

"""Sample quality against NFE on a trained digits model (part b of bench/samplers.py), one run.

Every sampler starts from the same prior draw (same key) on the EMA parameters of a checkpoint of
the quick start, and is scored by FD-digits (the digits classifier's Frechet distance to the
train split; lower is better), IS-digits and the share of the most frequent class. The real test
split gives the floor. Writes <out>/samplers_digits.{png,md}.

Usage: bash run.sh bench/samplers_digits.py --workdir digits_run [--n 512] [--step 1000]
       [--nfes 10,20,40] [--no-baselines]
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import numpy as np

from configs.vp import digits_ddpmpp_continuous
from score_jax import checkpoints, datasets, experiment, grid_search, images, plots, sampling
from score_jax import sample_quality
from score_jax.metrics import digits_net
from score_jax import xla_cpu

xla_cpu.configure()  # score_jax's XLA:CPU kernels, as main.py uses them

# label -> sampler(key, sde, score_fn, shape, eps) -> (x, nfe)
FAST = {
    "dpm_solver-3 single, time_quadratic": dict(solver="dpm_solver", order=3,
                                                method="singlestep", skip_type="time_quadratic"),
    "dpm_solver++-2 multi, logSNR": dict(solver="dpm_solver++", order=2, method="multistep"),
    "dpm_solver++-3 multi, time_quadratic": dict(solver="dpm_solver++", order=3,
                                                 method="multistep", skip_type="time_quadratic"),
    "ddim (eta 0)": dict(solver="ddim"),
    "heun (EDM, rho 7)": dict(solver="heun"),
    "unipc-3 (data, logSNR)": dict(solver="unipc"),
    "unipc-3 (noise, logSNR)": dict(solver="unipc", prediction="noise"),
    "dpm_solver-3 multi, logSNR": dict(solver="dpm_solver", order=3, method="multistep"),
}
NFES = (10, 20, 40)


def _searched(k, sde, f, shape, eps, n):
    """UniPC-3 (data) on a grid searched for this model on 64 draws of another key (PRNGKey(1))."""
    grid = grid_search.search_grid(jax.random.PRNGKey(1), sde, f, (64,) + shape[1:], nfe=n, eps=eps)
    return sampling.fast_sample(k, sde, f, shape, solver="unipc", nfe=n, eps=eps, grid=tuple(grid))


def _samplers(nfes, baselines=True):
    for label, options in FAST.items():
        for nfe in nfes:
            yield label, lambda k, sde, f, shape, eps, o=options, n=nfe: sampling.fast_sample(
                k, sde, f, shape, nfe=n, eps=eps, **o)
    for nfe in nfes:
        yield "unipc-3 (data), searched grid (s incl. search)", functools.partial(_searched, n=nfe)
    if not baselines:
        return
    yield "ODE RK45 1e-3 (config)", lambda k, sde, f, shape, eps: sampling.ode_sample(
        k, sde, f, shape, rtol=1e-3, atol=1e-3, eps=eps)
    yield "ODE RK45 1e-5", lambda k, sde, f, shape, eps: sampling.ode_sample(
        k, sde, f, shape, rtol=1e-5, atol=1e-5, eps=eps)
    yield "PC-1000 EM (official VP)", lambda k, sde, f, shape, eps: sampling.pc_sample(
        k, sde, f, shape, predictor="euler_maruyama", corrector="none", eps=eps)
    yield "PC-1000 RD+Langevin", lambda k, sde, f, shape, eps: sampling.pc_sample(
        k, sde, f, shape, predictor="reverse_diffusion", corrector="langevin", eps=eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="digits_run")
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--nfes", default=",".join(map(str, NFES)))
    parser.add_argument("--no-baselines", action="store_true",
                        help="only the few-step solvers (no ODE / PC-1000), -> samplers_digits_nfe.md")
    args = parser.parse_args()
    nfes = tuple(int(v) for v in args.nfes.split(","))
    name = "samplers_digits_nfe" if args.no_baselines else "samplers_digits"
    config = digits_ddpmpp_continuous.get_config()
    exp = experiment.build(config)
    manager = checkpoints.open_manager(os.path.join(args.workdir, "checkpoints"),
                                       snapshot_every=config.training.snapshot_freq,
                                       read_only=True)
    state = checkpoints.restore_step(manager, args.step,
                                     experiment.init_state(config, exp, abstract=True)).state
    score_fn = experiment.get_score_fn(config, exp.sde, exp.model, state.params_ema,
                                       state.model_state)
    scorer = sample_quality.get_scorer(config)
    inverse = datasets.get_data_inverse_scaler(True)
    shape = (args.n,) + exp.image_shape
    key = jax.random.PRNGKey(0)
    test, _ = digits_net.digits_split("test")
    floor = sample_quality.score_samples(scorer, test)["fd_digits"]
    print(f"floor: FD-digits of the {len(test)} real test digits = {floor:.2f}", flush=True)
    # The solver error itself: RMS distance (data scale [0, 1]) to a 200-evaluation UniPC-3 solve
    # of the same prior draw (fast_sample's draw depends on the key only); FD-digits also carries
    # the model's own error, which a better solve need not lower.
    reference = np.asarray(inverse(sampling.fast_sample(key, exp.sde, score_fn, shape,
                                                        solver="unipc", nfe=200,
                                                        eps=exp.sampling_eps)[0]))
    rows = []
    for label, run in _samplers(nfes, baselines=not args.no_baselines):
        t0 = time.perf_counter()
        x, nfe = run(key, exp.sde, score_fn, shape, exp.sampling_eps)
        x = np.asarray(inverse(x))
        same_draw = label in FAST or label.startswith("unipc-3 (data), searched")
        rms = float(np.sqrt(np.mean((x - reference) ** 2))) if same_draw else float("nan")
        x = images.to_uint8(np.clip(x, 0, 1))
        seconds = time.perf_counter() - t0
        s = sample_quality.score_samples(scorer, x)
        top = max(s[f"class_{c}"] for c in range(10))
        rows.append((label, int(nfe), s["fd_digits"], s["is_digits"], top, seconds, rms))
        print(f"  {label:38s} nfe {int(nfe):5d}  RMS to ref {rms:.4f}  FD-digits {s['fd_digits']:7.2f}  IS-digits "
              f"{s['is_digits']:5.2f}  top class {top:.2f}  {seconds:6.1f} s (incl. compile)",
              flush=True)
    os.makedirs(args.out, exist_ok=True)
    table = ["| sampler | NFE | RMS to 200-NFE UniPC | FD-digits | IS-digits | top class share "
             "| s (incl. compile) |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r[0]} | {r[1]} | {r[6]:.4f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.1f} |"
              for r in rows]
    table.append("\nRMS to 200-NFE UniPC: from the same prior draw (few-step solvers only).")
    table.append(f"\nFloor (real test digits): FD-digits {floor:.2f}; {args.n} samples each, "
                 f"checkpoint step {args.step}.")
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    series: dict = {}
    for label, nfe, fd, *_ in rows:
        series.setdefault(label, ([], []))
        series[label][0].append(nfe)
        series[label][1].append(fd)
    baselines = {label: xs_ys[1][0] for label, xs_ys in series.items() if len(xs_ys[0]) == 1}
    curves = {label: xs_ys for label, xs_ys in series.items() if len(xs_ys[0]) > 1}
    plots.save_charts(os.path.join(args.out, f"{name}.png"), [plots.Chart(
        title="digits model: FD-digits vs NFE", series=curves,
        hlines={**baselines, "real test digits": floor}, ylabel="FD-digits")])
    print("\n".join(table))


if __name__ == "__main__":
    main()

"""Sample quality against NFE for every sampler, side by side in one run, with an exact score.

(a) A 2-D three-component Gaussian mixture (tests/gmm.py two_d_mixture) whose perturbed marginals,
and so its score, are closed forms: no training. Quality is the sliced Wasserstein-1 distance
(64 random directions) between 50,000 samples and the exact mixture itself (each projection's
exact CDF), so the reference adds no noise; the same distance for 50,000 exact draws is printed
as the floor. W1 rather than W2: the components sit ~4 apart, and W2 is dominated by the binomial
noise of the component counts (it moves mass delta ~ n^-1/2 a distance d at a cost d sqrt(delta),
so its floor falls only as n^-1/4; measured 0.05 between two sets of 20,000 exact draws, more
than most solvers' bias), while W1's floor falls as n^-1/2. Every sampler starts from the same
prior draw (same key). Samplers: fast_sample's DDIM (eta 0 and 1), DPM-Solver(++)
single/multistep, EDM Heun/Euler (+ churn) on an NFE ladder, the adaptive reverse-SDE solver on a
tolerance ladder, and as baselines PC-1000 (reverse diffusion + Langevin, 2000 NFE), P-1000
(reverse diffusion only, 1000 NFE) and the probability-flow ODE (dopri5, rtol = atol = 1e-5).

`compare_samplers(key, sde, score_fn, shape, metric_fn, ...)` is the hook for other models (e.g.
the digits quick-start network with an FD metric): it takes any score_fn and metric_fn(samples).

Writes <out>/samplers_gmm.png (one panel per SDE, SW against NFE, log axes) and
<out>/samplers_gmm.md (the table), and prints the table. Seconds are one warm call on a shared
2-core CPU (other jobs running), for orientation only.

First, the issue-27 table: 10 and 20 NFE on VE, VP, sub-VP for the solvers as they were (BEFORE)
and the new ones (AFTER), mean +- std of the sliced W1 over 3 prior keys, 20,000 samples, on the
issue's two-mode mixture and the three-mode one (--table-only writes it alone to
samplers_gmm_nfe.md).

Usage: PYTHONPATH=. python bench/samplers.py [--out bench/results] [--n 50000] [--table-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from typing import Callable

import jax
import numpy as np
from scipy import special

from score_jax import fast_sampling, grid_search, plots, sampling
from score_jax import sde as sde_lib
from score_jax import xla_cpu
from tests import gmm

xla_cpu.configure()  # score_jax's XLA:CPU kernels, as main.py uses them

NFE_LADDER = (6, 8, 10, 15, 20, 30, 50, 100)
TOL_LADDER = (0.5, 0.2, 0.1, 0.05, 0.02, 0.01)   # adaptive_sde rel_tol (abs_tol = rel_tol / 5)
FAST = {   # label -> (solver, options); 'tq': time steps uniform in sqrt(t) (time_quadratic)
    "ddim": ("ddim", {}),
    "ddim eta=1": ("ddim", dict(eta=1.0)),
    "dpm_solver-3 single": ("dpm_solver", dict(order=3, method="singlestep")),
    "dpm_solver-3 single tq": ("dpm_solver", dict(order=3, method="singlestep",
                                                  skip_type="time_quadratic")),
    "dpm_solver-2 multi": ("dpm_solver", dict(order=2, method="multistep")),
    "dpm_solver++-2 multi": ("dpm_solver++", dict(order=2, method="multistep")),
    "dpm_solver++-3 multi": ("dpm_solver++", dict(order=3, method="multistep")),
    "dpm_solver++-3 multi tq": ("dpm_solver++", dict(order=3, method="multistep",
                                                     skip_type="time_quadratic")),
    "unipc-3 (data)": ("unipc", {}),
    "heun (edm)": ("heun", {}),
    "euler (edm)": ("euler", {}),
    "heun churn=5": ("heun", dict(s_churn=5.0)),
}


# The 10 / 20 NFE table (issue 27): solvers as they were against the new ones, each as
# (solver, options, eps rule); 'level' stops the solve at noise level sigma / alpha = 0.01
# (eps_at_noise_level; never below t = 1e-3), 't' at the usual t = 1e-3; 'level+search' also
# uses the grid of grid_search.search_grid fitted on 2,000 draws of another key (PRNGKey(7)).
TABLE_NFES = (10, 20)
TABLE_KEYS = 3
TABLE_N = 20_000
BEFORE = {
    "dpm_solver (3S logSNR)": ("dpm_solver", {}, "t"),
    "dpm_solver++ (2M logSNR)": ("dpm_solver++", {}, "t"),
    "dpm_solver++ 3M tq": ("dpm_solver++", dict(order=3, skip_type="time_quadratic"), "t"),
    "dpm_solver-3 single tq": ("dpm_solver", dict(skip_type="time_quadratic"), "t"),
    "heun (edm)": ("heun", {}, "t"),
    "ddim": ("ddim", {}, "t"),
}
AFTER = {
    "unipc-3 (data, logSNR)": ("unipc", {}, "t"),
    "unipc-3 (data), eps at level": ("unipc", {}, "level"),
    "unipc-3 (noise), eps at level": ("unipc", dict(prediction="noise"), "level"),
    "dpm_solver 3M, eps at level": ("dpm_solver", dict(method="multistep"), "level"),
    "unipc-3 (data), eps at level, searched grid": ("unipc", {}, "level+search"),
    "unipc-3 (noise), eps at level, searched grid": ("unipc", dict(prediction="noise"),
                                                     "level+search"),
}


def table_eps(sde: sde_lib.SDE, rule: str) -> float:
    """The solve's end time under an eps rule of BEFORE / AFTER."""
    if rule == "t":
        return 1e-3
    # VE's sigma / alpha is 0.01 at t = 0: its usual t = 1e-3 is the same level already.
    return max(1e-3, fast_sampling.eps_at_noise_level(sde, 0.01))


def spread(run: Callable[[jax.Array], np.ndarray], metric_fn, keys: int) -> tuple[float, float]:
    """(mean, std) of metric_fn over `keys` prior keys PRNGKey(100 + i)."""
    values = [metric_fn(np.asarray(run(jax.random.PRNGKey(100 + i)))) for i in range(keys)]
    return float(np.mean(values)), float(np.std(values))


def nfe_table(sde: sde_lib.SDE, score_fn: Callable, metric_fn, *, n: int = TABLE_N,
              keys: int = TABLE_KEYS) -> dict[str, tuple[float, float]]:
    """'label @ nfe' -> (mean, std) SW1 over prior keys for BEFORE and AFTER, plus the tight ODE."""
    cells = {}
    for label, (solver, options, rule) in {**BEFORE, **AFTER}.items():
        for nfe in TABLE_NFES:
            eps = table_eps(sde, rule)
            if rule.endswith("search"):
                options = dict(options, grid=tuple(grid_search.search_grid(
                    jax.random.PRNGKey(7), sde, score_fn, (2000, 2), nfe=nfe, eps=eps,
                    solver=solver, **{k: v for k, v in options.items() if k != "grid"})))
            cells[f"{label} @ {nfe}"] = spread(
                lambda k: sampling.fast_sample(k, sde, score_fn, (n, 2), solver=solver, nfe=nfe,
                                               eps=eps, **options)[0],
                metric_fn, keys)
            print(f"  {label:30s} {nfe:3d}  {cells[f'{label} @ {nfe}'][0]:.4f} "
                  f"+- {cells[f'{label} @ {nfe}'][1]:.4f}", flush=True)
    cells["ODE dopri5 1e-5"] = spread(
        lambda k: sampling.ode_sample(k, sde, score_fn, (n, 2))[0], metric_fn, keys)
    return cells


def _table_markdown(mixture_name: str, tables: dict, floor: tuple[float, float]) -> str:
    """Rows: solvers (before, then after); columns: SDE x NFE; cells mean +- std."""
    sdes = list(tables)
    head = " | ".join(f"{s} @ {nfe}" for s in sdes for nfe in TABLE_NFES)
    lines = [f"### {mixture_name}: sliced W1 to the exact mixture at 10 and 20 NFE, mean +- std "
             f"over {TABLE_KEYS} prior keys, {TABLE_N} samples",
             "", f"| | solver | {head} |", "|---|---|" + "---|" * len(sdes) * len(TABLE_NFES)]
    for group, solvers in (("before", BEFORE), ("after", AFTER)):
        for label in solvers:
            cells = " | ".join("{:.4f} +- {:.4f}".format(*tables[s][f"{label} @ {nfe}"])
                               for s in sdes for nfe in TABLE_NFES)
            lines.append(f"| {group} | {label} | {cells} |")
    ode = " | ".join("{:.4f} +- {:.4f}".format(*tables[s]["ODE dopri5 1e-5"])
                     for s in sdes for _ in TABLE_NFES)
    lines.append(f"| reference | ODE dopri5 rtol = atol = 1e-5 (~110 NFE) | {ode} |")
    lines += ["", f"{TABLE_N} exact draws against the exact mixture (the floor): "
              f"{floor[0]:.4f} +- {floor[1]:.4f}.", ""]
    return "\n".join(lines)


@dataclasses.dataclass
class Row:
    """One sampler run: its family label, NFE actually spent, the metric and warm seconds."""

    label: str
    nfe: int
    metric: float
    seconds: float
    baseline: bool = False


def _directions(key: jax.Array, dim: int, n_dirs: int) -> np.ndarray:
    """n_dirs random unit vectors [dim, n_dirs]."""
    dirs = np.asarray(jax.random.normal(key, (dim, n_dirs)), np.float64)
    return dirs / np.linalg.norm(dirs, axis=0, keepdims=True)


def sliced_wasserstein(key: jax.Array, x: np.ndarray, y: np.ndarray, n_dirs: int = 64,
                       p: int = 1) -> float:
    """Sliced Wasserstein-p distance between equal-size samples x, y [n, ...] (random dirs)."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    dirs = _directions(key, x.shape[1], n_dirs)
    px, py = np.sort(x @ dirs, axis=0), np.sort(y @ dirs, axis=0)
    return float(np.mean(np.abs(px - py) ** p) ** (1.0 / p))


def sliced_w1_to_mixture(key: jax.Array, x: np.ndarray, mixture: gmm.GaussianMixture,
                         n_dirs: int = 64, grid: int = 8192) -> float:
    """Sliced W1 between samples x [n, d] and the exact mixture: mean over directions of the
    integral of |F_n - F| of each projection, F the exact projected mixture CDF."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    dirs = _directions(key, x.shape[1], n_dirs)
    proj = np.sort(x @ dirs, axis=0)                                    # [n, n_dirs]
    means = mixture.means @ dirs                                        # [K, n_dirs]
    stds = np.sqrt((mixture.stds ** 2) @ dirs ** 2)                     # [K, n_dirs]
    lo = min(proj.min(), (means - 8 * stds).min())
    hi = max(proj.max(), (means + 8 * stds).max())
    t = np.linspace(lo, hi, grid)
    total = 0.0
    for j in range(n_dirs):
        exact = np.sum(mixture.weights[:, None]
                       * special.ndtr((t[None] - means[:, j, None]) / stds[:, j, None]), axis=0)
        empirical = np.searchsorted(proj[:, j], t, side="right") / len(proj)
        total += np.trapezoid(np.abs(empirical - exact), t)
    return total / n_dirs


def _timed(run: Callable[[], tuple]) -> tuple[np.ndarray, int, float]:
    """(samples, nfe, seconds of a second, warm call)."""
    run()
    start = time.perf_counter()
    x, nfe = run()
    x = np.asarray(jax.block_until_ready(x))
    return x, int(nfe), time.perf_counter() - start


def compare_samplers(key: jax.Array, sde: sde_lib.SDE, score_fn: Callable, shape: tuple,
                     metric_fn: Callable[[np.ndarray], float], *, nfes=NFE_LADDER,
                     tols=TOL_LADDER, baselines: bool = True) -> list[Row]:
    """Run every sampler on score_fn (same key) and score its samples [*shape] with metric_fn."""
    rows = []

    def add(label, run, baseline=False):
        x, nfe, seconds = _timed(run)
        rows.append(Row(label, nfe, metric_fn(x), seconds, baseline))
        print(f"  {label:24s} nfe {nfe:5d}  metric {rows[-1].metric:.4f}  {seconds:6.2f} s",
              flush=True)

    for label, (solver, options) in FAST.items():
        for nfe in nfes:
            add(label, lambda: sampling.fast_sample(key, sde, score_fn, shape, solver=solver,
                                                    nfe=nfe, **options))
    for tol in tols:
        add("adaptive_sde", lambda: sampling.fast_sample(
            key, sde, score_fn, shape, solver="adaptive_sde", nfe=20_000, rel_tol=tol,
            abs_tol=tol / 5))
    if baselines:
        add("PC-1000 (RD+Langevin)", lambda: sampling.pc_sample(
            key, sde, score_fn, shape, predictor="reverse_diffusion", corrector="langevin"), True)
        add("P-1000 (RD)", lambda: sampling.pc_sample(
            key, sde, score_fn, shape, predictor="reverse_diffusion", corrector="none"), True)
        add("ODE dopri5 1e-5", lambda: sampling.ode_sample(key, sde, score_fn, shape), True)
    return rows


def _markdown(results: dict, floors: dict) -> str:
    """One table per SDE: samplers as rows, NFE (metric) as cells."""
    lines = []
    for name, rows in results.items():
        lines += [f"### {name}: sliced W1 to the exact mixture (exact draws: {floors[name]:.4f})",
                  "", "| sampler | NFE: SW1 ... |", "|---|---|"]
        for label in dict.fromkeys(r.label for r in rows):
            cells = ", ".join(f"{r.nfe}: {r.metric:.4f}" for r in rows if r.label == label)
            lines.append(f"| {label} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def _summary(name: str, rows: list[Row], budget: int = 20) -> str:
    """The best fast sampler within `budget` NFE against PC-1000."""
    best = min((r for r in rows if not r.baseline and r.nfe <= budget), key=lambda r: r.metric)
    pc = next(r for r in rows if r.label.startswith("PC-1000"))
    return (f"{name}: best at <= {budget} NFE: {best.label} (nfe {best.nfe}) SW1 {best.metric:.4f}"
            f" vs PC-1000 (nfe {pc.nfe}) SW1 {pc.metric:.4f}: ratio {best.metric / pc.metric:.2f}")


def _nfe_tables() -> str:
    """The before/after tables on the issue's two-mode mixture and the three-mode one."""
    dirs_key = jax.random.PRNGKey(123)
    parts = []
    for mixture_name, mixture in (("two-mode mixture (issue 27)", gmm.two_mode_mixture()),
                                  ("three-mode mixture", gmm.two_d_mixture())):
        metric = lambda x, m=mixture: sliced_w1_to_mixture(dirs_key, x, m)  # noqa: E731
        draws = [metric(mixture.sample(np.random.default_rng(i), TABLE_N)[0])
                 for i in range(TABLE_KEYS)]
        floor = (float(np.mean(draws)), float(np.std(draws)))
        tables = {}
        for name, sde in (("VE", sde_lib.VESDE()), ("VP", sde_lib.VPSDE()),
                          ("sub-VP", sde_lib.SubVPSDE())):
            print(f"{mixture_name}, {name}:", flush=True)
            tables[name] = nfe_table(sde, mixture.score_fn(sde), metric)
        parts.append(_table_markdown(mixture_name, tables, floor))
    text = "\n".join(parts)
    print(text, flush=True)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--table-only", action="store_true",
                        help="only the 10 / 20 NFE before/after table (-> samplers_gmm_nfe.md)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    tables_md = _nfe_tables()
    if args.table_only:
        with open(os.path.join(args.out, "samplers_gmm_nfe.md"), "w") as f:
            f.write(tables_md)
        return
    mixture = gmm.two_d_mixture()
    dirs_key = jax.random.PRNGKey(123)
    metric = lambda x: sliced_w1_to_mixture(dirs_key, x, mixture)  # noqa: E731
    floor = metric(mixture.sample(np.random.default_rng(0), args.n)[0])
    results, floors, charts, summary = {}, {}, [], []
    for name, sde in (("VP", sde_lib.VPSDE()), ("sub-VP", sde_lib.SubVPSDE()),
                      ("VE", sde_lib.VESDE())):
        print(f"{name}:", flush=True)
        rows = compare_samplers(jax.random.PRNGKey(7), sde, mixture.score_fn(sde), (args.n, 2),
                                metric)
        results[name], floors[name] = rows, floor
        series = {}
        for r in rows:
            if not r.baseline:
                series.setdefault(r.label, ([], []))
                series[r.label][0].append(r.nfe)
                series[r.label][1].append(r.metric)
        hlines = {f"{r.label} ({r.nfe})": r.metric for r in rows if r.baseline}
        hlines[f"{args.n} exact draws"] = floor
        charts.append(plots.Chart(f"{name}: sliced W1 to the exact mixture", series, hlines,
                                  xlabel="NFE (score evaluations)", ylabel="SW1"))
        summary.append(_summary(name, rows))
    plots.save_charts(os.path.join(args.out, "samplers_gmm.png"), charts)
    table = _markdown(results, floors)
    with open(os.path.join(args.out, "samplers_gmm.md"), "w") as f:
        f.write(tables_md + "\n## The NFE ladder (one prior key)\n\n" + table + "\n"
                + "\n".join(f"- {s}" for s in summary) + "\n")
    print(table)
    print("\n".join(summary))


if __name__ == "__main__":
    main()

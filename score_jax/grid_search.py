"""Time grids searched for one score model: few-step solves that land where the ODE itself does.

A fixed spacing (uniform in logSNR, sqrt(t), EDM's sigma^(1/rho)) spends steps where the model's
output hardly changes; "Align Your Steps" (Sabour et al. 2024) instead optimises the grid for the
model at hand. Here the objective is the solver's own error: the mean distance, over a batch of
prior draws, between the `nfe`-evaluation solve and a reference solve of the same probability-flow
ODE from the same draws by the same solver with `reference_nfe` evaluations. Since
W1(solver, data) <= E|x_solver - x_ODE| + W1(ODE, data), driving this mean (not the RMS, which a
few draws that switch modes dominate) down closes the gap
between a few-step solver and what the ODE reaches, whatever the data; it costs a few hundred
few-step solves of a small batch, once per (model, SDE, solver, nfe), and the grid is reused.

The search is coordinate descent on the interior knots in logSNR (the end points T and eps stay):
each sweep tries moving every knot by +-step within its neighbours, keeps a move that lowers the
error, and halves the step.

References:
  Sabour, Fidler & Kreis, "Align Your Steps: Optimizing Sampling Schedules in Diffusion Models",
  ICML 2024.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

from score_jax import checks
from score_jax import fast_sampling as fs
from score_jax import sde as sde_lib

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
_GRID_SOLVERS = ("unipc",)    # solvers with a `grid` option


def search_grid(key: jax.Array, sde: sde_lib.SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
                nfe: int, eps: float = 1e-3, denoise: bool = True, solver: str = "unipc",
                reference_nfe: int = 200, sweeps: int = 6, **solver_options) -> np.ndarray:
    """Times [nfe - denoise + 1] from T to eps minimising the solver's error on prior draws [*shape].

    Args:
      key: PRNG key of the prior draws the grid is fitted on (use another for evaluation).
      sde, score_fn, shape: as in fast_sampling.fast_sample; a batch of a few hundred to a few
        thousand examples is plenty.
      nfe, eps, denoise: the solve the grid is for (fast_sample's meaning).
      solver: a solver with a `grid` option ('unipc').
      reference_nfe: evaluations of the reference solve (logSNR grid), far beyond nfe.
      sweeps: coordinate-descent sweeps; the knot step halves after each.
      **solver_options: the solver's other options, used for both solves.

    Returns:
      float64 times [nfe - denoise + 1], T first and eps last: fast_sample's `grid` option.

    Raises:
      InvalidInputError: a solver without a grid option, or bad nfe / sweeps / fast_sample input.
    """
    checks.lookup("solver", solver, {name: None for name in _GRID_SOLVERS})
    checks.check_positive("sweeps", sweeps, integer=True)
    checks.check_positive("reference_nfe", reference_nfe, integer=True)
    eps = checks.check_eps(sde, eps)
    m = nfe - int(denoise)
    x_T = sde.prior_sampling(key, checks.check_shape(shape))
    score_fn = jax.tree_util.Partial(score_fn)   # one compilation for every candidate grid
    common = dict(solver=solver, eps=eps, denoise=denoise, x_init=x_T, **solver_options)
    reference = np.asarray(fs.fast_sample(key, sde, score_fn, shape, nfe=reference_nfe,
                                          **common)[0], np.float64)

    def error(lam: np.ndarray) -> float:
        x, _ = fs.fast_sample(key, sde, score_fn, shape, nfe=nfe, grid=_times(sde, lam, eps),
                              **common)
        diff = (np.asarray(x, np.float64) - reference).reshape(len(reference), -1)
        return float(np.mean(np.linalg.norm(diff, axis=1)))

    lam = fs.log_snr(sde, fs.time_grid(sde, m, eps, solver_options.get("skip_type", "logSNR"),
                                       solver_options.get("rho", 7.0)))
    spacing = (lam[-1] - lam[0]) / m
    best, step = error(lam), spacing / 2.0
    for _ in range(sweeps):
        for i in range(1, m):
            for move in (step, -step):
                trial = lam.copy()
                trial[i] += move
                # Knots closer than 5% of the uniform spacing only make multistep ratios blow up.
                if min(trial[i] - trial[i - 1], trial[i + 1] - trial[i]) < 0.05 * spacing:
                    continue
                trial_error = error(trial)
                if trial_error < best:
                    lam, best = trial, trial_error
                    break
        step /= 2.0
    return np.asarray(_times(sde, lam, eps))


def _times(sde: sde_lib.SDE, lam: np.ndarray, eps: float) -> tuple[float, ...]:
    """The times of logSNR knots lam [n] (increasing), with T and eps exact at the ends."""
    ts = fs.time_of_log_snr(sde, lam)
    ts[0], ts[-1] = sde.T, eps
    return tuple(float(t) for t in ts)

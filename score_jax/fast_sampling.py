"""Few-step samplers of the probability-flow ODE and an adaptive reverse-SDE solver, any score_fn.

Every deterministic solver here (DDIM, DPM-Solver, DPM-Solver++, EDM Heun/Euler) is a *plan*: a
table built on the host in float64, one row per score evaluation, run by one compiled loop. Row k
evaluates the model output m_k = p_k x_k + q_k score(x_k, t_k) (the noise prediction
eps = -sigma score, or the data prediction x0 = (x + sigma^2 score) / alpha), then moves to

    x_{k+1} = a_k A + c_k0 m_k + c_k1 m_{k-1} + c_k2 m_{k-2} + c_k3 m_{k-3} + n_k z_k,

where A is the state at the start of the current solver step (rows flagged `start` set it). Every
single-step and multistep exponential integrator, UniPC's predictor-corrector pairs, Heun's method
and DDIM's noise are such rows, so one loop serves them all, and a new solver is only a new table.
Tables are padded to a power of two and the loop runs a traced number of rows, so one compilation
serves many NFE.

All SDEs share the parametrisation x_t = alpha_t x_0 + sigma_t z with alpha_t, sigma_t the exact
mean scale and std of `marginal_prob` (sub-VP's sigma is not sqrt(1 - alpha^2)), logSNR
lambda = log(alpha / sigma). VE: alpha = 1, sigma = smin (smax / smin)^t, inverted exactly.

NFE conventions (every count is of score_fn calls, and equals the `nfe` asked for):
  - M = nfe - 1 if denoise else nfe evaluations go to the solve from T to eps; denoise adds one
    Tweedie step x0 = (x + sigma^2 score) / alpha at eps (EDM's last Euler step to sigma = 0).
  - 'ddim', 'euler', order-1 DPM-Solver: M steps. 'heun': ceil(M / 2) steps, the last one Euler when
    M is odd (EDM). Multistep DPM-Solver: M steps (order warm-up at the start, lower orders at the
    end for M < 15 with lower_order_final). Single-step DPM-Solver: the reference's order pattern,
    e.g. order 3: [3, ..., 3] + ([2, 1] | [1] | [2]) for M mod 3 = 0 | 1 | 2.
  - 'unipc': M steps, each one evaluation: the output at the predicted state feeds the corrector
    of that step and the predictor of the next; no corrector after the last step (it would cost an
    evaluation). Order warm-up and lower_order_final as multistep DPM-Solver.
  - 'adaptive_sde': 2 per iteration (accepted or rejected) + denoise; nfe is the budget.

References:
  Song, Meng & Ermon, "Denoising Diffusion Implicit Models", ICLR 2021.
  Lu et al., "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model Sampling in Around
  10 Steps", NeurIPS 2022; "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
  Probabilistic Models", 2022.
  Karras et al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022.
  Jolicoeur-Martineau et al., "Gotta Go Fast When Generating Data with Score-Based Models", 2021.
  Zhao et al., "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
  Models", NeurIPS 2023.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import adaptive_sde
from score_jax import checks
from score_jax import sde as sde_lib
from score_jax.errors import InvalidInputError

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic", "edm")
_LOWER_ORDER_FINAL_BELOW = 15   # the reference applies lower_order_final below 15 steps


# --------------------------------------------------------------------------------------------
# Noise schedule in float64 on the host: alpha, sigma, lambda and its exact inverse
# --------------------------------------------------------------------------------------------

def alpha_sigma(sde: sde_lib.SDE, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean scale alpha_t and std sigma_t of marginal_prob, float64 numpy, shape of t."""
    t = np.asarray(t, np.float64)
    if isinstance(sde, sde_lib.VESDE):
        return np.ones_like(t), sde.sigma(t)
    lmc = sde.log_mean_coeff(t)
    var = -np.expm1(2.0 * lmc)
    return np.exp(lmc), (var if isinstance(sde, sde_lib.SubVPSDE) else np.sqrt(var))


def log_snr(sde: sde_lib.SDE, t: np.ndarray) -> np.ndarray:
    """lambda_t = log(alpha_t / sigma_t), float64, shape of t (decreasing in t)."""
    alpha, sigma = alpha_sigma(sde, t)
    return np.log(alpha) - np.log(sigma)


def time_of_log_snr(sde: sde_lib.SDE, lam: np.ndarray) -> np.ndarray:
    """The exact inverse of log_snr: t with lambda_t = lam, float64, shape of lam."""
    lam = np.asarray(lam, np.float64)
    if isinstance(sde, sde_lib.VESDE):
        return (-lam - math.log(sde.sigma_min)) / math.log(sde.sigma_max / sde.sigma_min)
    if isinstance(sde, sde_lib.SubVPSDE):
        # alpha / (1 - alpha^2) = e^lam, a quadratic in alpha.
        log_alpha = lam + math.log(2.0) - np.log1p(np.sqrt(1.0 + 4.0 * np.exp(2.0 * lam)))
    else:
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * lam)    # alpha^2 = 1 / (1 + e^{-2 lam})
    # log_alpha = -(b1 - b0) t^2 / 4 - b0 t / 2, solved in the cancellation-free form.
    b0, db = sde.beta_min, sde.beta_max - sde.beta_min
    return -2.0 * log_alpha / (0.5 * b0 + np.sqrt(0.25 * b0 ** 2 - db * log_alpha))


def eps_at_noise_level(sde: sde_lib.SDE, level: float) -> float:
    """The time t at which x_t / alpha_t has noise std sigma_t / alpha_t = level (a float).

    The same t means very different noise on different SDEs (at t = 1e-3 sub-VP's is 1e-4, VP's
    1e-2): a solve that stops at a noise level spends no steps below it on any SDE.
    """
    checks.check_positive("level", level)
    t = float(time_of_log_snr(sde, np.array(-math.log(level))))
    if not 0.0 <= t <= sde.T:
        top = float(np.exp(-log_snr(sde, np.array(sde.T))))
        raise InvalidInputError(f"level={level} is no noise level of this SDE on [0, T]; its "
                                f"sigma / alpha rises from sigma(0) to {top:.3g} at T.")
    return t


def time_grid(sde: sde_lib.SDE, n: int, eps: float, skip_type: str, rho: float = 7.0) -> np.ndarray:
    """n + 1 times [n + 1] from T down to eps, uniform in logSNR, t, sqrt(t) or sigma^(1/rho)."""
    u = np.linspace(0.0, 1.0, n + 1)
    lam_T, lam_eps = log_snr(sde, np.array([sde.T, eps]))
    if skip_type == "time_uniform":
        t = sde.T + u * (eps - sde.T)
    elif skip_type == "time_quadratic":
        t = (math.sqrt(sde.T) + u * (math.sqrt(eps) - math.sqrt(sde.T))) ** 2
    elif skip_type == "logSNR":
        t = time_of_log_snr(sde, lam_T + u * (lam_eps - lam_T))
    else:
        # EDM's rho-schedule in sigma / alpha = e^{-lambda}, the noise level of x / alpha.
        s_max, s_min = math.exp(-lam_T / rho), math.exp(-lam_eps / rho)
        t = time_of_log_snr(sde, -rho * np.log(s_max + u * (s_min - s_max)))
    t[0], t[-1] = sde.T, eps     # exact end points, free of rounding
    return t


def _given_or_spaced(sde: sde_lib.SDE, m: int, eps: float, skip_type: str, rho: float,
                     grid: Optional[tuple]) -> np.ndarray:
    """`grid` (m + 1 times from T down to eps, e.g. from grid_search) if given, else time_grid."""
    if grid is None:
        return time_grid(sde, m, eps, skip_type, rho)
    try:
        ts = np.array(grid, np.float64)
    except (TypeError, ValueError):
        raise InvalidInputError(f"grid must be a sequence of {m + 1} times, got {grid!r}.") from None
    if ts.shape != (m + 1,) or not (np.isclose(ts[0], sde.T) and np.isclose(ts[-1], eps)
                                    and np.all(np.diff(ts) < 0)):
        raise InvalidInputError(f"grid must be {m + 1} decreasing times from T={sde.T} to "
                                f"eps={eps} for this nfe and denoise, got {np.round(ts, 6)}.")
    ts[0], ts[-1] = sde.T, eps
    return ts


# --------------------------------------------------------------------------------------------
# Plans: one row per score evaluation
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Plan:
    """Host-side rows of the linear machine (see the module docstring) for one SDE."""

    sde: sde_lib.SDE
    rows: list = dataclasses.field(default_factory=list)
    init: tuple = (1.0, 0.0)        # (scale, noise std) applied to the starting state

    def add(self, t: float, kind: str, a: float, c, *, noise: float = 0.0, start: bool = True):
        """Append a row evaluating a `kind` ('noise' | 'data') model output at time t."""
        alpha, sigma = (float(v) for v in alpha_sigma(self.sde, np.array(t)))
        p, q = (0.0, -sigma) if kind == "noise" else (1.0 / alpha, sigma ** 2 / alpha)
        c = list(c) + [0.0] * (4 - len(c))
        self.rows.append([t, p, q, a, *c, noise, float(start)])

    def transform_last(self, scale: float, noise: float) -> None:
        """Map the state the last row produced (or the initial one) to scale x + noise z."""
        if not self.rows:
            self.init = (scale * self.init[0], noise)
            return
        row = self.rows[-1]
        row[3:8] = [scale * v for v in row[3:8]]
        row[8] = math.hypot(scale * row[8], noise)


def _phi(h: float, j: int, kind: str) -> float:
    """Exponential-integrator weight of the j-th Taylor term, for an estimate D_j ~ h^j m^(j).

    noise: int_0^h e^{h-u} u^j / j! du / h^j; data: int_0^h e^{-(h-u)} u^j / j! du / h^j.
    """
    sign = 1.0 if kind == "noise" else -1.0
    if abs(h) < 1.0:
        # The tail of the exponential series: the closed form cancels badly at small h.
        return sign ** (j + 1) * sum((sign * h) ** i / math.factorial(i)
                                     for i in range(j + 1, j + 30)) / h ** j
    taylor = sum((sign * h) ** i / math.factorial(i) for i in range(j + 1))
    return sign ** (j + 1) * (math.exp(sign * h) - taylor) / h ** j


def _exp_step(plan: _Plan, t: float, s: float, kind: str, weights) -> tuple[float, list]:
    """(a, c) of the exponential-integrator step t -> s with D_j = sum_i weights[j][i] m_{k-i}."""
    (alpha_t, alpha_s), (sigma_t, sigma_s) = alpha_sigma(plan.sde, np.array([t, s]))
    h = float(log_snr(plan.sde, np.array(s)) - log_snr(plan.sde, np.array(t)))
    if kind == "noise":
        a, scale = alpha_s / alpha_t, -sigma_s
    else:
        a, scale = sigma_s / sigma_t, alpha_s
    c = np.zeros(4)
    for j, w in enumerate(weights):
        c += scale * _phi(h, j, kind) * np.asarray(w + [0.0] * (4 - len(w)))
    return float(a), list(c)


def _singlestep(plan: _Plan, t: float, s: float, order: int, kind: str) -> None:
    """One single-step DPM-Solver(++) step of `order` (1-3) from t to s: `order` rows."""
    lam_t, lam_s = log_snr(plan.sde, np.array([t, s]))
    h = lam_s - lam_t
    r = {1: [], 2: [0.5], 3: [1.0 / 3.0, 2.0 / 3.0]}[order]
    mids = [float(time_of_log_snr(plan.sde, lam_t + ri * h)) for ri in r]
    if order == 1:
        plan.add(t, kind, *_exp_step(plan, t, s, kind, [[1.0]]))
    elif order == 2:
        plan.add(t, kind, *_exp_step(plan, t, mids[0], kind, [[1.0]]))
        d1 = 1.0 / r[0]
        plan.add(mids[0], kind, *_exp_step(plan, t, s, kind, [[0.0, 1.0], [d1, -d1]]), start=False)
    else:
        r1, r2 = r
        plan.add(t, kind, *_exp_step(plan, t, mids[0], kind, [[1.0]]))
        d1 = r2 / r1      # D_1 over the sub-step r2 h from the first sub-step's difference
        plan.add(mids[0], kind, *_exp_step(plan, t, mids[1], kind, [[0.0, 1.0], [d1, -d1]]),
                 start=False)
        # r2 = 2/3 makes this first-order difference cancel the m'' term (third order).
        plan.add(mids[1], kind, *_exp_step(plan, t, s, kind, [[0.0, 0.0, 1.0],
                                                             [1.0 / r2, 0.0, -1.0 / r2]]),
                 start=False)


def _singlestep_orders(m: int, order: int) -> list[int]:
    """The reference's single-step order pattern summing to m evaluations."""
    if order == 1:
        return [1] * m
    if order == 2:
        return [2] * (m // 2) + [1] * (m % 2)
    tail = {0: [2, 1], 1: [1], 2: [2]}[m % 3]
    return [3] * ((m - sum(tail)) // 3) + tail


def _dpm_plan(plan, m, eps, *, order, method, skip_type, rho, lower_order_final, kind):
    """DPM-Solver (kind 'noise') or DPM-Solver++ (kind 'data') rows for m evaluations."""
    sde = plan.sde
    if method == "singlestep":
        orders = _singlestep_orders(m, order)
        if skip_type == "logSNR":
            outer = time_grid(sde, len(orders), eps, skip_type, rho)
        else:
            outer = time_grid(sde, m, eps, skip_type, rho)[np.concatenate([[0], np.cumsum(orders)])]
        for i, o in enumerate(orders):
            _singlestep(plan, float(outer[i]), float(outer[i + 1]), o, kind)
        return
    ts = time_grid(sde, m, eps, skip_type, rho)
    lam = log_snr(sde, ts)
    for i in range(m):
        o = min(order, i + 1)
        if lower_order_final and m < _LOWER_ORDER_FINAL_BELOW:
            o = min(o, m - i)
        weights = [[1.0]]
        if o >= 2:
            r0 = (lam[i] - lam[i - 1]) / (lam[i + 1] - lam[i])
            weights.append([1.0 / r0, -1.0 / r0])
        if o == 3:
            r1 = (lam[i - 1] - lam[i - 2]) / (lam[i + 1] - lam[i])
            d10 = np.array([1.0, -1.0, 0.0, 0.0]) / r0
            d11 = np.array([0.0, 1.0, -1.0, 0.0]) / r1
            weights = [[1.0], list(d10 + r0 / (r0 + r1) * (d10 - d11)),
                       list(2.0 * (d10 - d11) / (r0 + r1))]
        step = _exp_step(plan, float(ts[i]), float(ts[i + 1]), kind, weights)
        plan.add(float(ts[i]), kind, *step)


def _unipc_step(sde, ts, i, order, kind, variant) -> tuple[float, dict, dict]:
    """UniPC's step t_i -> t_{i+1}: (a, predictor, corrector) with x_{i+1} = a x_i + sum c_j m_j.

    The combinations are {j: c_j} over model outputs m_j at grid times t_j; the predictor uses
    m_i .. m_{i-order+1}, the corrector also m_{i+1} (the output at the predicted x_{i+1}).
    """
    (alpha_s, alpha_t), (sigma_s, sigma_t) = alpha_sigma(sde, ts[i:i + 2])
    lam = log_snr(sde, ts[max(0, i - order + 1):i + 2])[::-1]     # lam[0] = lambda_{i+1}
    h = lam[0] - lam[1]
    hh, a, scale = (-h, sigma_t / sigma_s, alpha_t) if kind == "data" else (
        h, alpha_t / alpha_s, sigma_t)
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else h_phi_1
    rks = np.array([(lam[j + 1] - lam[1]) / h for j in range(1, order)] + [1.0])
    # b_k = k! phi_{k+1}(hh) / B(h): the Taylor weights the corrector's rhos have to match.
    b, h_phi_k, factorial = [], h_phi_1 / hh - 1.0, 1.0
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    powers = np.stack([rks ** (k - 1) for k in range(1, order + 1)])
    rhos_p = [0.5] if order == 2 else (np.linalg.solve(powers[:-1, :-1], b[:-1]) if order > 2
                                       else [])
    rhos_c = [0.5] if order == 1 else np.linalg.solve(powers, b)
    base = {i: -scale * h_phi_1}
    pred, corr = dict(base), dict(base)
    # D1_j = (m_{i-j} - m_i) / r_j; the corrector's last difference is m_{i+1} - m_i (r = 1).
    diffs = [({i - j: 1.0 / rks[j - 1], i: -1.0 / rks[j - 1]}) for j in range(1, order)]
    diffs.append({i + 1: 1.0, i: -1.0})
    for rhos, out, terms in ((rhos_p, pred, diffs[:-1]), (rhos_c, corr, diffs)):
        for rho, diff in zip(rhos, terms):
            for j, w in diff.items():
                out[j] = out.get(j, 0.0) - scale * b_h * rho * w
    return float(a), pred, corr


def _unipc_plan(plan, m, eps, *, order, prediction, variant, skip_type, rho, lower_order_final,
                grid):
    """UniPC rows for m evaluations: multistep predictor, corrector after every step but the last.

    Row k evaluates m_k at the predicted x_k; the corrected state is x_k + Delta_k, Delta_k a
    combination of m_k .. m_{k-3}, so the row moves the predicted x_k straight to the next
    predicted x_{k+1} = a (x_k + Delta_k) + predictor terms: one evaluation per step.
    """
    sde = plan.sde
    ts = _given_or_spaced(sde, m, eps, skip_type, rho, grid)
    kind = "data" if prediction == "data" else "noise"
    delta: dict = {}
    for i in range(m):
        o = min(order, i + 1)
        if lower_order_final and m < _LOWER_ORDER_FINAL_BELOW:
            o = min(o, m - i)
        a, pred, corr = _unipc_step(sde, ts, i, o, kind, variant)
        coef = {j: a * w for j, w in delta.items()}
        for j, w in pred.items():
            coef[j] = coef.get(j, 0.0) + w
        plan.add(float(ts[i]), kind, a, [coef.get(i - lag, 0.0) for lag in range(4)])
        # Delta_{i+1} = corrector - predictor, applied to the state the next row evaluates.
        delta = {j: corr.get(j, 0.0) - pred.get(j, 0.0) for j in set(corr) | set(pred)}


def _ddim_plan(plan, m, eps, *, eta, skip_type, rho):
    """DDIM rows: x_s = alpha_s x0 + (sigma_s^2 - c^2)^0.5 eps + c z, c = eta sigma_s (1-e^-2h)^0.5.

    eta = 1 is the DDPM posterior q(x_s | x_t, x0) for any alpha, sigma (ancestral sampling).
    """
    ts = time_grid(plan.sde, m, eps, skip_type, rho)
    alpha, sigma = alpha_sigma(plan.sde, ts)
    lam = log_snr(plan.sde, ts)
    for i in range(m):
        c = eta * sigma[i + 1] * math.sqrt(-math.expm1(-2.0 * (lam[i + 1] - lam[i])))
        if c > sigma[i + 1]:
            raise InvalidInputError(f"eta={eta} makes the DDIM noise std exceed sigma_s at step "
                                    f"{i}; use 0 <= eta <= 1.")
        coef = math.sqrt(sigma[i + 1] ** 2 - c ** 2) - alpha[i + 1] * sigma[i] / alpha[i]
        plan.add(float(ts[i]), "noise", alpha[i + 1] / alpha[i], [coef], noise=c)


def _edm_plan(plan, m, eps, *, heun, skip_type, rho, s_churn, s_min, s_max, s_noise):
    """EDM Euler/Heun rows in s = sigma / alpha, the noise level of x / alpha: dx/alpha = eps ds."""
    sde = plan.sde
    n_steps = (m + 1) // 2 if heun else m
    ts = time_grid(sde, n_steps, eps, skip_type, rho)
    alpha, sigma = alpha_sigma(sde, ts)
    levels = sigma / alpha
    gamma = min(s_churn / n_steps, math.sqrt(2.0) - 1.0) if s_churn > 0 else 0.0
    for i in range(n_steps):
        t, level, a_t = float(ts[i]), levels[i], alpha[i]
        if gamma > 0 and s_min <= level <= s_max:
            # Churn: raise the noise level to s_hat (capped at the prior's) and re-noise.
            s_hat = min(level * (1.0 + gamma), levels[0])
            t_hat = float(time_of_log_snr(sde, -math.log(s_hat))) if s_hat > level else t
            a_hat = float(alpha_sigma(sde, np.array(t_hat))[0])
            plan.transform_last(a_hat / a_t, a_hat * math.sqrt(s_hat ** 2 - level ** 2) * s_noise)
            t, level, a_t = t_hat, s_hat, a_hat
        ds = levels[i + 1] - level
        euler = alpha[i + 1] * ds
        plan.add(t, "noise", alpha[i + 1] / a_t, [euler])
        if heun and not (m % 2 == 1 and i == n_steps - 1):
            plan.add(float(ts[i + 1]), "noise", alpha[i + 1] / a_t, [euler / 2, euler / 2],
                     start=False)


# --------------------------------------------------------------------------------------------
# Solver table and options
# --------------------------------------------------------------------------------------------

_EDM_OPTIONS = dict(skip_type="edm", rho=7.0, s_churn=0.0, s_min=0.0, s_max=math.inf, s_noise=1.0)
_DPM_OPTIONS = dict(order=3, method="singlestep", skip_type="logSNR", rho=7.0,
                    lower_order_final=True)
_ADAPTIVE_OPTIONS = dict(abs_tol=0.0078, rel_tol=0.05, safety=0.9, exponent=0.9, h_init=0.01)

# name -> (default options, plan builder or None for the adaptive SDE solver).
FAST_SOLVERS: dict[str, tuple[dict, Optional[Callable]]] = {
    "ddim": (dict(eta=0.0, skip_type="time_uniform", rho=7.0), _ddim_plan),
    "dpm_solver": (_DPM_OPTIONS, functools.partial(_dpm_plan, kind="noise")),
    "dpm_solver++": (dict(_DPM_OPTIONS, order=2, method="multistep"),
                     functools.partial(_dpm_plan, kind="data")),
    # Data prediction: with a trained network, noise prediction at 10 NFE diverged on the digits
    # model (FD-digits 243 against 20; bench/results/samplers_digits_nfe.md).
    "unipc": (dict(order=3, prediction="data", variant="bh2", skip_type="logSNR", rho=7.0,
                   lower_order_final=True, grid=None), _unipc_plan),
    "heun": (_EDM_OPTIONS, functools.partial(_edm_plan, heun=True)),
    "euler": (_EDM_OPTIONS, functools.partial(_edm_plan, heun=False)),
    "adaptive_sde": (_ADAPTIVE_OPTIONS, None),
}


def _options(solver: str, given: dict[str, Any]) -> dict[str, Any]:
    """The solver's defaults updated with `given`, validated; raises naming the bad option."""
    defaults = FAST_SOLVERS[solver][0]
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise InvalidInputError(f"fast_sample(solver={solver!r}) got unknown options {unknown}; "
                                f"valid options are {sorted(defaults)}.")
    opts = dict(defaults, **given)
    if "order" in opts and (isinstance(opts["order"], bool) or opts["order"] not in (1, 2, 3)):
        raise InvalidInputError(f"order must be 1, 2 or 3 for {solver!r}, got order="
                                f"{opts['order']!r}.")
    if "method" in opts and opts["method"] not in ("singlestep", "multistep"):
        raise InvalidInputError(f"method={opts['method']!r} is unknown; valid methods are "
                                f"['multistep', 'singlestep'].")
    for name, valid in (("prediction", ("data", "noise")), ("variant", ("bh1", "bh2"))):
        if name in opts and opts[name] not in valid:
            raise InvalidInputError(f"{name}={opts[name]!r} is unknown for {solver!r}; valid values "
                                    f"are {list(valid)}.")
    if "skip_type" in opts and opts["skip_type"] not in SKIP_TYPES:
        raise InvalidInputError(f"skip_type={opts['skip_type']!r} is unknown; valid skip types are "
                                f"{sorted(SKIP_TYPES)}.")
    for name in ("rho", "abs_tol", "rel_tol", "safety", "exponent", "h_init"):
        if name in opts:
            checks.check_positive(name, opts[name])
    for name in ("eta", "s_churn", "s_min", "s_noise"):
        if name in opts and not (isinstance(opts[name], (int, float)) and opts[name] >= 0):
            raise InvalidInputError(f"{name} must be a non-negative number, got {opts[name]!r}.")
    return opts


def build_plan(sde: sde_lib.SDE, solver: str, nfe: int, eps: float, denoise: bool,
               **options) -> _Plan:
    """The rows of a deterministic-table solver with exactly `nfe` score evaluations."""
    opts = _options(solver, options)
    plan = _Plan(sde)
    FAST_SOLVERS[solver][1](plan, nfe - int(denoise), eps, **opts)
    if denoise:
        plan.add(eps, "data", 0.0, [1.0])
    return plan


# --------------------------------------------------------------------------------------------
# The compiled machine
# --------------------------------------------------------------------------------------------

def _padded(rows: list) -> np.ndarray:
    """Rows [L, 10] zero-padded to a power of two (>= 8), so nearby NFE share one compilation."""
    size = max(8, 1 << (len(rows) - 1).bit_length())
    table = np.zeros((size, 10))
    table[: len(rows)] = np.asarray(rows)
    return table


@functools.partial(jax.jit, static_argnames=("sde", "shape"))
def _plan_program(key, score_fn, x_init, table, n_rows, init, *, sde, shape):
    """Run n_rows rows of `table` [L, 10] from a prior draw (or x_init): one compiled loop."""
    prior_key, init_key, loop_key = jax.random.split(key, 3)
    x = sde.prior_sampling(prior_key, shape) if x_init is None else x_init
    table, init = table.astype(x.dtype), init.astype(x.dtype)
    x = init[0] * x + init[1] * jax.random.normal(init_key, shape, x.dtype)

    def body(k, carry):
        x, anchor, m1, m2, m3 = carry
        t, p, q, a, c0, c1, c2, c3, noise, start = (table[k, j] for j in range(10))
        anchor = jnp.where(start > 0, x, anchor)
        m0 = p * x + q * score_fn(x, jnp.full(shape[:1], t, x.dtype))
        z = jax.random.normal(jax.random.fold_in(loop_key, k), shape, x.dtype)
        x = a * anchor + c0 * m0 + c1 * m1 + c2 * m2 + c3 * m3 + noise * z
        return x, anchor, m0, m1, m2

    zeros = jnp.zeros_like(x)
    x, *_ = jax.lax.fori_loop(0, n_rows, body, (x, x, zeros, zeros, zeros))
    return x


def _check_nfe(solver: str, nfe: Any, denoise: bool) -> int:
    least = 2 if denoise else 1
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < least:
        raise InvalidInputError(
            f"nfe must be an integer >= {least} for solver={solver!r} with denoise={denoise} "
            f"(denoising takes one evaluation, the solve at least one), got nfe={nfe!r}.")
    return int(nfe)


def fast_sample(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
                solver: str, nfe: int, eps: float = 1e-3, denoise: bool = True,
                x_init: Optional[Array] = None, **solver_options) -> tuple[Array, int]:
    """Sample with a few-step solver from the prior at T to eps: -> (samples [*shape], nfe).

    Args:
      key: PRNG key (prior draw and any solver noise, per row `fold_in(key, k)`).
      sde: VESDE, VPSDE or SubVPSDE.
      score_fn: score_fn(x [B, ...], t [B]) -> score; a `jax.tree_util.Partial` carries its
        parameters as leaves, so new parameters do not recompile.
      shape: [batch, *data_shape].
      solver: a name in FAST_SOLVERS.
      nfe: score evaluations, exactly (the budget, for 'adaptive_sde'), denoising included.
      eps: the last time of the solve, in (0, T).
      denoise: finish with the Tweedie step x0 = (x + sigma^2 score) / alpha at eps (1 nfe).
      x_init: optional starting state [*shape] at T instead of a prior draw.
      **solver_options: 'ddim': eta, skip_type, rho. 'dpm_solver' / 'dpm_solver++': order (1-3),
        method ('singlestep' | 'multistep'), skip_type ('logSNR' | 'time_uniform' |
        'time_quadratic' | 'edm'), rho, lower_order_final. 'unipc': order (1-3), prediction
        ('noise' | 'data'), variant ('bh1' | 'bh2'), skip_type, rho, lower_order_final, grid (nfe -
        denoise + 1 times from T to eps, e.g. grid_search.search_grid's, overriding skip_type).
        'heun' / 'euler': skip_type, rho, s_churn, s_min, s_max, s_noise. 'adaptive_sde':
        abs_tol, rel_tol, safety, exponent, h_init.

    Returns:
      (samples [*shape], nfe): nfe the score_fn calls made (see the module docstring).

    Raises:
      InvalidInputError: unknown solver or option, a bad order / nfe / eps / shape / score_fn.
      SolverError: 'adaptive_sde' did not reach eps within the nfe budget.
    """
    checks.check_sde(sde)
    solver = checks.lookup("solver", solver, FAST_SOLVERS)
    shape = checks.check_shape(shape)
    eps = checks.check_eps(sde, eps)
    nfe = _check_nfe(solver, nfe, bool(denoise))
    x_init = checks.check_x_init(x_init, shape)
    dtype = jnp.result_type(float) if x_init is None else x_init.dtype
    checks.check_score_fn(score_fn, shape, dtype)
    score_fn = score_fn if isinstance(score_fn, jax.tree_util.Partial) else (
        jax.tree_util.Partial(score_fn))
    if solver == "adaptive_sde":
        opts = _options(solver, solver_options)
        return adaptive_sde.adaptive_sample(key, sde, score_fn, shape, nfe=nfe, eps=eps,
                                            denoise=bool(denoise), x_init=x_init, **opts)
    plan = build_plan(sde, solver, nfe, eps, bool(denoise), **solver_options)
    x = _plan_program(key, score_fn, x_init, jnp.asarray(_padded(plan.rows)),
                      jnp.asarray(len(plan.rows)), jnp.asarray(plan.init), sde=sde, shape=shape)
    return x, len(plan.rows)

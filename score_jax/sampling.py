"""Predictor-corrector samplers and the probability-flow ODE sampler for any score_fn(x, t).

Every predictor and corrector is a plain function with one signature,

    update(key, sde, score_fn, x [B, ...], t [B], *, probability_flow, snr, n_steps) -> (x, x_mean)

where `x_mean` is the update without its final noise (the "denoised" state). Predictors ignore
`snr`/`n_steps`, correctors ignore `probability_flow`. They live in the tables `PREDICTORS` and
`CORRECTORS`, keyed by the official score_sde names.

NFE (number of score evaluations) conventions, all counted, never the official `N (n_steps + 1)`:
  - PC sampler: N * (p + c * n_steps), with p = 1 for every predictor but 'none' (0) and c = 1 for
    'langevin'/'ald', 0 for 'none'. Denoising reuses the last x_mean and costs nothing.
  - ODE sampler: evaluations made by the diffrax solve (the first stage, then every new stage of
    every accepted or rejected step; FSAL stages counted once), plus 1 for the denoising step.

References:
  Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations",
  ICLR 2021, Section 4 and Appendices D-G (predictor-corrector sampling, probability flow).
  Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution",
  NeurIPS 2019 (annealed Langevin dynamics).
  Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (ancestral sampling).
  Dormand & Prince, "A family of embedded Runge-Kutta formulae", J. Comp. Appl. Math. 1980.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import diffrax
import jax
import jax.numpy as jnp

from score_jax import checks
from score_jax import sde as sde_lib
from score_jax.sde import batch_broadcast
from score_jax.errors import InvalidInputError, SolverError

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
# project(key, x, x_mean, t) -> (x, x_mean): a per-step constraint for controllable generation.
ProjectFn = Callable[[Array, Array, Array, Array], tuple[Array, Array]]


# --------------------------------------------------------------------------------------------
# Predictors
# --------------------------------------------------------------------------------------------

def euler_maruyama(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array, *,
                   probability_flow: bool = False, snr: float = 0.0,
                   n_steps: int = 1) -> tuple[Array, Array]:
    """Euler-Maruyama step of the reverse SDE (or ODE) with dt = -T/N: x [B, ...], t [B] -> (x, x_mean)."""
    del snr, n_steps
    dt = -sde.T / sde.N
    drift, diffusion = sde.reverse(score_fn, probability_flow).sde(x, t)
    x_mean = x + drift * dt
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_broadcast(diffusion * math.sqrt(-dt), x) * noise, x_mean


def reverse_diffusion(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array, *,
                      probability_flow: bool = False, snr: float = 0.0,
                      n_steps: int = 1) -> tuple[Array, Array]:
    """Reverse-diffusion step x - f + G z from the SDE's discretisation: x [B, ...], t [B] -> (x, x_mean)."""
    del snr, n_steps
    f, G = sde.reverse(score_fn, probability_flow).discretize(x, t)
    x_mean = x - f
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_broadcast(G, x) * noise, x_mean


def ancestral_sampling(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array, *,
                       probability_flow: bool = False, snr: float = 0.0,
                       n_steps: int = 1) -> tuple[Array, Array]:
    """Ancestral step of the SMLD (VE) or DDPM (VP) chain: x [B, ...], t [B] -> (x, x_mean).

    Raises:
      ValueError: for sub-VP, which has no discrete forward Markov chain (its `discretize` is plain
        Euler-Maruyama), so the ancestral posterior p(x_{i-1} | x_i) is undefined; and with
        probability_flow, since ancestral sampling is stochastic by construction.
    """
    del snr, n_steps
    _check_ancestral(sde, probability_flow)
    timestep = sde_lib.timestep_index(sde, t)
    score = score_fn(x, t)
    noise = jax.random.normal(key, x.shape, x.dtype)
    if isinstance(sde, sde_lib.VESDE):
        sigma = sde.discrete_sigmas[timestep]
        adjacent = jnp.where(timestep == 0, jnp.zeros_like(sigma),
                             sde.discrete_sigmas[jnp.maximum(timestep - 1, 0)])
        x_mean = x + batch_broadcast(sigma ** 2 - adjacent ** 2, x) * score
        std = jnp.sqrt(adjacent ** 2 * (sigma ** 2 - adjacent ** 2) / sigma ** 2)
    else:
        beta = sde.discrete_betas[timestep]
        x_mean = (x + batch_broadcast(beta, x) * score) / batch_broadcast(jnp.sqrt(1.0 - beta), x)
        std = jnp.sqrt(beta)
    return x_mean + batch_broadcast(std, x) * noise, x_mean


def _check_ancestral(sde: sde_lib.SDE, probability_flow: bool) -> None:
    if not isinstance(sde, (sde_lib.VESDE, sde_lib.VPSDE)):
        raise InvalidInputError(
            f"predictor='ancestral_sampling' needs the SMLD (VESDE) or DDPM (VPSDE) Markov chain, got "
            f"sde={type(sde).__name__}: sub-VP has no discrete forward chain, so its ancestral step is "
            f"undefined; use predictor='reverse_diffusion' or 'euler_maruyama'.")
    if probability_flow:
        raise InvalidInputError("predictor='ancestral_sampling' is stochastic and has no probability-flow "
                                "form; set probability_flow=False or use 'reverse_diffusion'.")


def no_predictor(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array, *,
                 probability_flow: bool = False, snr: float = 0.0,
                 n_steps: int = 1) -> tuple[Array, Array]:
    """The empty predictor (corrector-only sampling): x [B, ...] -> (x, x)."""
    del key, sde, score_fn, t, probability_flow, snr, n_steps
    return x, x


# --------------------------------------------------------------------------------------------
# Correctors
# --------------------------------------------------------------------------------------------

def _langevin_loop(key: Array, score_fn: ScoreFn, x: Array, t: Array, n_steps: int,
                   step_size_fn: Callable[[Array, Array], Array]) -> tuple[Array, Array]:
    """n_steps of x <- x + e grad + sqrt(2 e) z, with e = step_size_fn(grad, noise) [B]."""

    def body(j, carry):
        x, _ = carry
        grad = score_fn(x, t)
        noise = jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype)
        step_size = step_size_fn(grad, noise)
        x_mean = x + batch_broadcast(step_size, x) * grad
        return x_mean + batch_broadcast(jnp.sqrt(2.0 * step_size), x) * noise, x_mean

    return jax.lax.fori_loop(0, n_steps, body, (x, x))


def _mean_norm(v: Array) -> Array:
    """Per-example L2 norm averaged over the whole (global) batch, a scalar."""
    return jnp.mean(jnp.linalg.norm(v.reshape(v.shape[0], -1), axis=-1))


def langevin(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array, *,
             probability_flow: bool = False, snr: float = 0.16,
             n_steps: int = 1) -> tuple[Array, Array]:
    """Langevin corrector with step 2 alpha (snr |z| / |score|)^2: x [B, ...], t [B] -> (x, x_mean).

    The norms are averaged over the whole batch (the official code's `pmean` over devices of
    per-device means, which equals the global mean for equal shards); alpha = sde.langevin_alpha(t).
    """
    del probability_flow
    alpha = sde.langevin_alpha(t)

    def step_size(grad, noise):
        return (snr * _mean_norm(noise) / _mean_norm(grad)) ** 2 * 2.0 * alpha

    return _langevin_loop(key, score_fn, x, t, n_steps, step_size)


def ald(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array, *,
        probability_flow: bool = False, snr: float = 0.16,
        n_steps: int = 1) -> tuple[Array, Array]:
    """Annealed Langevin dynamics (NCSN) with step 2 alpha (snr std(t))^2: x [B, ...], t [B] -> (x, x_mean)."""
    del probability_flow
    alpha = sde.langevin_alpha(t)
    std = sde.marginal_prob(x, t)[1]
    size = (snr * std) ** 2 * 2.0 * alpha
    return _langevin_loop(key, score_fn, x, t, n_steps, lambda grad, noise: size)


def no_corrector(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array, *,
                 probability_flow: bool = False, snr: float = 0.16,
                 n_steps: int = 1) -> tuple[Array, Array]:
    """The empty corrector (predictor-only sampling): x [B, ...] -> (x, x)."""
    del key, sde, score_fn, t, probability_flow, snr, n_steps
    return x, x


PREDICTORS = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral_sampling": ancestral_sampling,
    "none": no_predictor,
}
CORRECTORS = {"langevin": langevin, "ald": ald, "none": no_corrector}
# Score evaluations per predictor call, and per corrector sub-step (times n_steps).
_PREDICTOR_NFE = {"euler_maruyama": 1, "reverse_diffusion": 1, "ancestral_sampling": 1, "none": 0}
_CORRECTOR_NFE = {"langevin": 1, "ald": 1, "none": 0}


def get_predictor(name: str) -> Callable[..., tuple[Array, Array]]:
    """The predictor called `name` (official names; case-insensitive)."""
    return PREDICTORS[checks.lookup("predictor", name, PREDICTORS)]


def get_corrector(name: str) -> Callable[..., tuple[Array, Array]]:
    """The corrector called `name` (official names; case-insensitive)."""
    return CORRECTORS[checks.lookup("corrector", name, CORRECTORS)]


def pc_nfe(sde: sde_lib.SDE, predictor: str, corrector: str, n_steps: int) -> int:
    """Score evaluations made by pc_sample: N * (predictor evals + n_steps * corrector evals)."""
    p = _PREDICTOR_NFE[checks.lookup("predictor", predictor, PREDICTORS)]
    c = _CORRECTOR_NFE[checks.lookup("corrector", corrector, CORRECTORS)]
    return sde.N * (p + c * n_steps)


# --------------------------------------------------------------------------------------------
# Validation (host side, before anything is compiled)
# --------------------------------------------------------------------------------------------

def _as_pytree(fn: Optional[Callable]) -> Optional[jax.tree_util.Partial]:
    """Wrap a callable as a pytree so jit takes it as an argument (its arrays stay leaves)."""
    if fn is None or isinstance(fn, jax.tree_util.Partial):
        return fn
    return jax.tree_util.Partial(fn)


# --------------------------------------------------------------------------------------------
# Predictor-corrector sampler
# --------------------------------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("sde", "shape", "predictor", "corrector", "n_steps",
                                             "eps", "denoise", "probability_flow"))
def _pc_program(key, score_fn, project, x_init, snr, *, sde, shape, predictor, corrector,
                n_steps, eps, denoise, probability_flow):
    """The whole PC loop as one XLA program; returns samples of `shape`."""
    predictor_fn, corrector_fn = PREDICTORS[predictor], CORRECTORS[corrector]
    prior_key, loop_key = jax.random.split(key)
    x = sde.prior_sampling(prior_key, shape) if x_init is None else x_init
    timesteps = jnp.linspace(sde.T, eps, sde.N)
    hyper = dict(probability_flow=probability_flow, snr=snr, n_steps=n_steps)

    def body(i, carry):
        x, x_mean = carry
        t = jnp.full(shape[:1], timesteps[i], dtype=x.dtype)
        k_corr, k_proj_c, k_pred, k_proj_p = jax.random.split(jax.random.fold_in(loop_key, i), 4)
        x, x_mean = corrector_fn(k_corr, sde, score_fn, x, t, **hyper)
        if project is not None:
            x, x_mean = project(k_proj_c, x, x_mean, t)
        x, x_mean = predictor_fn(k_pred, sde, score_fn, x, t, **hyper)
        if project is not None:
            x, x_mean = project(k_proj_p, x, x_mean, t)
        return x, x_mean

    x, x_mean = jax.lax.fori_loop(0, sde.N, body, (x, x))
    return x_mean if denoise else x


def pc_sample(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
              predictor: str = "reverse_diffusion", corrector: str = "langevin",
              snr: float = 0.16, n_steps: int = 1, eps: float = 1e-3, denoise: bool = True,
              probability_flow: bool = False, project: Optional[ProjectFn] = None,
              x_init: Optional[Array] = None) -> tuple[Array, int]:
    """Predictor-corrector sampling from the prior at T down to eps: -> (samples [*shape], nfe).

    At each of the N times t_i = linspace(T, eps, N)[i] the corrector runs first, then the
    predictor, as in the official score_sde. Per-step keys are `fold_in(key, i)`, so a loop resumed
    at step i reproduces the uninterrupted run. The whole loop is one compiled program; a
    `jax.tree_util.Partial` score_fn (e.g. from models.score.get_score_fn) carries its parameters as
    leaves, so new parameters do not recompile.

    Args:
      key: PRNG key.
      sde: the forward SDE (VESDE, VPSDE or SubVPSDE).
      score_fn: score_fn(x [B, ...], t [B]) -> score [B, ...].
      shape: [batch, *data_shape] of the samples.
      predictor: a name in PREDICTORS ('ancestral_sampling' only for VE and VP).
      corrector: a name in CORRECTORS.
      snr: the corrector's signal-to-noise ratio.
      n_steps: corrector sub-steps per time step.
      eps: the last time of the loop, in (0, T).
      denoise: return the last update's noise-free mean x_mean (official "noise_removal").
      probability_flow: predictors follow the probability-flow ODE instead of the reverse SDE.
      project: optional `project(key, x, x_mean, t [B]) -> (x, x_mean)`, applied after each corrector
        and each predictor update with that step's t (inpainting, colorization). Pass a
        `jax.tree_util.Partial` to keep its arrays (masks, data) as traced leaves.
      x_init: optional starting state [*shape] used instead of a draw from the prior.

    Returns:
      (samples [*shape], nfe) with nfe = N * (p + c * n_steps) score evaluations (see pc_nfe).

    Raises:
      ValueError: for an unknown predictor/corrector, eps outside (0, T), a bad shape, snr or
        n_steps, x_init of another shape, a score_fn whose output is not of the shape of x, or
        ancestral sampling with sub-VP or probability_flow.
    """
    checks.check_sde(sde)
    predictor = checks.lookup("predictor", predictor, PREDICTORS)
    corrector = checks.lookup("corrector", corrector, CORRECTORS)
    shape = checks.check_shape(shape)
    eps = checks.check_eps(sde, eps)
    checks.check_positive("snr", snr)
    checks.check_positive("n_steps", n_steps, integer=True)
    if predictor == "ancestral_sampling":
        _check_ancestral(sde, probability_flow)
    x_init = checks.check_x_init(x_init, shape)
    dtype = jnp.result_type(float) if x_init is None else x_init.dtype
    checks.check_score_fn(score_fn, shape, dtype)
    if project is not None and not callable(project):
        raise InvalidInputError(f"project must be callable project(key, x, x_mean, t) or None, "
                                f"got {type(project).__name__}.")
    samples = _pc_program(key, _as_pytree(score_fn), _as_pytree(project), x_init,
                          jnp.asarray(snr, dtype), sde=sde, shape=shape, predictor=predictor,
                          corrector=corrector, n_steps=int(n_steps), eps=eps, denoise=bool(denoise),
                          probability_flow=bool(probability_flow))
    return samples, pc_nfe(sde, predictor, corrector, n_steps)


# --------------------------------------------------------------------------------------------
# Probability-flow ODE
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Solver:
    """A diffrax solver and how it steps: adaptive ones use a PIDController, others N fixed steps."""

    make: Callable[[], diffrax.AbstractSolver]
    adaptive: bool


SOLVERS = {
    "dopri5": _Solver(diffrax.Dopri5, True),
    "tsit5": _Solver(diffrax.Tsit5, True),
    "dopri8": _Solver(diffrax.Dopri8, True),
    "bosh3": _Solver(diffrax.Bosh3, True),
    "heun": _Solver(diffrax.Heun, True),
    "euler": _Solver(diffrax.Euler, False),     # N uniform steps, no error estimate
    "midpoint": _Solver(diffrax.Midpoint, False),
}


def _stages(solver: diffrax.AbstractSolver) -> tuple[int, bool]:
    """(stages per step, first-same-as-last) of a Runge-Kutta solver; Euler has one stage."""
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        return 1, False
    return int(tableau.num_stages), bool(tableau.fsal)


class ODESolveError(SolverError):
    """The probability-flow ODE solve did not reach its end time (e.g. max_steps too small)."""


def _flow_solve(score_fn, x, t_start, t_end, *, sde, solver, rtol, atol, max_steps):
    """Integrate the probability-flow ODE from t_start to t_end; -> (x, num_steps, result)."""
    rsde = sde.reverse(score_fn, probability_flow=True)

    def vf(t, y, args):
        return rsde.sde(y, jnp.full(y.shape[:1], t, dtype=y.dtype))[0]

    spec = SOLVERS[solver]
    solver_obj = spec.make()
    _, fsal = _stages(solver_obj)
    solver_state = None
    if fsal:
        # Hand the solver its first stage up front. Otherwise diffrax re-evaluates stage 0 on every
        # try until the first accepted step, a number its statistics do not record; this way each
        # step (accepted or rejected) costs exactly stages - 1 evaluations.
        solver_state = (jnp.array(False), vf(t_start, x, None))
    if spec.adaptive:
        # An explicit first step (1% of the span) instead of dt0=None: diffrax 0.7 picks a fixed
        # 0.01 for a time-reversed solve anyway (its heuristic skips wrapped terms), and an
        # explicit value keeps the nfe count independent of that detail.
        controller, dt0 = diffrax.PIDController(rtol=rtol, atol=atol), 0.01 * (t_end - t_start)
    else:
        controller, dt0 = diffrax.ConstantStepSize(), (t_end - t_start) / sde.N
    sol = diffrax.diffeqsolve(diffrax.ODETerm(vf), solver_obj, t_start, t_end, dt0, x,
                              stepsize_controller=controller, max_steps=max_steps,
                              solver_state=solver_state, throw=False)
    return sol.ys[-1], sol.stats["num_steps"], sol.result


def _flow_nfe(solver: str, num_steps: int) -> int:
    """Score evaluations of one _flow_solve with num_steps (accepted + rejected) steps."""
    spec = SOLVERS[solver]
    stages, fsal = _stages(spec.make())
    return (1 if fsal else 0) + (stages - 1 if fsal else stages) * num_steps


@functools.partial(jax.jit, static_argnames=("sde", "shape", "t_start", "t_end", "denoise",
                                             "solver", "rtol", "atol", "max_steps"))
def _ode_program(key, score_fn, x, *, sde, shape, t_start, t_end, denoise, solver, rtol, atol,
                 max_steps):
    """Prior draw (when x is None), the flow solve and the optional denoising step, compiled once.

    The end times are static: a known direction of integration compiles ~30% faster in diffrax.
    """
    prior_key, denoise_key = jax.random.split(key)
    if x is None:
        x = sde.prior_sampling(prior_key, shape)
    x, num_steps, result = _flow_solve(score_fn, x, t_start, t_end, sde=sde, solver=solver,
                                       rtol=rtol, atol=atol, max_steps=max_steps)
    if denoise:
        t = jnp.full(shape[:1], t_end, dtype=x.dtype)
        _, x = reverse_diffusion(denoise_key, sde, score_fn, x, t, probability_flow=False)
    return x, num_steps, result


def _run_flow(key, sde, score_fn, x, shape, *, t_start, t_end, denoise, solver, rtol, atol,
              max_steps) -> tuple[Array, int]:
    """Validate, run _ode_program, check the solver status on the host; -> (x, nfe)."""
    checks.check_sde(sde)
    solver = checks.lookup("solver", solver, SOLVERS)
    checks.check_positive("rtol", rtol)
    checks.check_positive("atol", atol)
    checks.check_positive("max_steps", max_steps, integer=True)
    dtype = jnp.result_type(float) if x is None else x.dtype
    checks.check_score_fn(score_fn, shape, dtype)
    out, num_steps, result = _ode_program(
        key, _as_pytree(score_fn), x, sde=sde, shape=shape, t_start=float(t_start),
        t_end=float(t_end), denoise=bool(denoise), solver=solver, rtol=float(rtol),
        atol=float(atol), max_steps=int(max_steps))
    num_steps = int(num_steps)
    if not bool(result == diffrax.RESULTS.successful):
        raise ODESolveError(
            f"probability-flow ODE solve from t={t_start} to t={t_end} with solver={solver!r} failed "
            f"after {num_steps} steps (max_steps={max_steps}): {diffrax.RESULTS[result]} Increase "
            f"max_steps or loosen rtol={rtol}/atol={atol}; a diverging score_fn also causes this.")
    return out, _flow_nfe(solver, num_steps) + (1 if denoise else 0)


def ode_sample(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, shape: tuple[int, ...], *,
               rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3, denoise: bool = True,
               solver: str = "dopri5", max_steps: int = 4096) -> tuple[Array, int]:
    """Sample by solving the probability-flow ODE from a prior draw at T to eps: -> (x [*shape], nfe).

    One compiled program: prior draw, diffrax solve (adaptive PID step control with an RMS error
    norm over the whole batch, like the official scipy RK45 call; 'euler'/'midpoint' take N fixed
    steps), and, with denoise, one reverse-diffusion step at eps returning its mean (official).

    Args:
      key: PRNG key (prior draw).
      sde, score_fn, shape: as in pc_sample.
      rtol, atol: tolerances of the adaptive step-size controller.
      eps: end time in (0, T).
      denoise: finish with one noise-free reverse-diffusion step at eps (+1 nfe).
      solver: a name in SOLVERS ('dopri5' is the official RK45 method).
      max_steps: cap on solver steps (accepted + rejected).

    Returns:
      (samples [*shape], nfe): nfe counts every score evaluation of the solve (1 for the first
      stage of an FSAL method, then stages - 1 per step for FSAL methods or stages per step
      otherwise, rejected steps included; the first step is 1% of the time span, so no evaluations
      go into choosing it), plus 1 for denoising.

    Raises:
      ValueError: for bad arguments (see pc_sample), an unknown solver or non-positive tolerances.
      ODESolveError: if the solve stops early (max_steps reached or a non-finite step).
    """
    checks.check_sde(sde)
    shape = checks.check_shape(shape)
    eps = checks.check_eps(sde, eps)
    return _run_flow(key, sde, score_fn, None, shape, t_start=sde.T, t_end=eps, denoise=denoise,
                     solver=solver, rtol=rtol, atol=atol, max_steps=max_steps)


def ode_encode(sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, *, rtol: float = 1e-5,
               atol: float = 1e-5, eps: float = 1e-3, solver: str = "dopri5",
               max_steps: int = 4096) -> tuple[Array, int]:
    """Map data x [B, ...] at time eps to its latent z [B, ...] at T along the flow: -> (z, nfe).

    Deterministic (no key). nfe as in ode_sample, without denoising.
    """
    checks.check_sde(sde)
    x = checks.check_data(x, "x")
    eps = checks.check_eps(sde, eps)
    return _run_flow(jax.random.PRNGKey(0), sde, score_fn, x, x.shape, t_start=eps, t_end=sde.T,
                     denoise=False, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps)


def ode_decode(sde: sde_lib.SDE, score_fn: ScoreFn, z: Array, *, rtol: float = 1e-5,
               atol: float = 1e-5, eps: float = 1e-3, solver: str = "dopri5",
               max_steps: int = 4096) -> tuple[Array, int]:
    """Map a latent z [B, ...] at T to data x [B, ...] at eps along the flow: -> (x, nfe).

    The inverse of ode_encode (no denoising step, so decode(encode(x)) == x up to the tolerances).
    """
    checks.check_sde(sde)
    z = checks.check_data(z, "z")
    eps = checks.check_eps(sde, eps)
    return _run_flow(jax.random.PRNGKey(0), sde, score_fn, z, z.shape, t_start=sde.T, t_end=eps,
                     denoise=False, solver=solver, rtol=rtol, atol=atol, max_steps=max_steps)


# Few-step solvers live in their own module (it imports nothing from this one); re-exported so
# every sampler is reachable as sampling.<name>.
from score_jax.fast_sampling import FAST_SOLVERS, build_plan, fast_sample  # noqa: E402,F401

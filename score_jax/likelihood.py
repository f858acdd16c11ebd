"""Exact log-likelihood and bits/dim of data under a score model, along the probability-flow ODE.

Instantaneous change of variables (Chen et al. 2018) along dx/dt = f~(x, t) = f - g^2 score / 2:
  log p_eps(x) = log p_T(z) + int_eps^T div f~(x(t), t) dt,   z = x(T).
The drift and its divergence come from ONE `jax.vjp` of the drift per evaluation: the VJP's primal
output is f~, its cotangent with the Hutchinson noise v gives v^T J, so div ~ v^T J v (the official
score_sde evaluates the drift again in a second device call). With hutchinson='exact' the trace of J
is summed from D VJPs against basis vectors (vmapped; for small D only).

Two solvers (Dormand-Prince 5(4), same rtol/atol semantics), chosen by `method`:
  - 'diffeqsolve': `diffrax.diffeqsolve`, the whole solve one compiled program. Default on GPU/TPU,
    where it avoids a host round trip per step. Not measured on an accelerator yet.
  - 'stepped': `score_jax.ode_stepper`, one compiled call per step attempt looped from Python.
    Default on CPU: XLA:CPU runs convolution VJPs inside compiled loops ~10x slower (DESIGN.md,
    "Known trap"); bench/likelihood.py measures both against the official scipy-RK45 design.
  - 'auto': 'stepped' if `jax.default_backend() == 'cpu'`, else 'diffeqsolve'.

Batch versus per-example step sizes:
  - per_example=False (default): the batch is one ODE state with one step size (as the paper and the
    official code). One program, no per-example control flow, works unchanged under a sharded
    `jit`; the hardest example sets the step size for all (the error norm takes the worst example).
  - per_example=True: each example is its own ODE with its own adaptive steps (vmap over the solve).
    Easy examples take fewer, longer steps (they are still evaluated, masked, until the slowest
    finishes), so their numbers differ from the batched solve by up to the truncation error. Use
    it when examples differ a lot in difficulty or a result must not depend on its batch mates.

Error control (differs from the official code on purpose): both solvers judge a step by
`error_norm`, which per example takes the RMS of the scaled error over the D data components and
the scaled error of the one log-density component APART, keeps the larger, and then the worst
example (scale atol + rtol max(|y|, |y_new|) per component, as scipy). The official code, through
scipy's RK45, takes one RMS over all B (D + 1) components, where each log-density weighs
1 / (B (D + 1)): its error can exceed the tolerance up to sqrt(B (D + 1))-fold before a step is
rejected, so in high D the likelihood, the very output, is the least controlled component.
Measured with the exact divergence on 16-D Gaussian mixtures (tests/test_likelihood.py) at
rtol=atol=1e-5, float32: the official norm leaves up to 6.8e-3 nats of error, this one under 1e-3
(VE, VP, sub-VP; stepped; diffeqsolve, whose controller is not scipy's step for step, up to
1.3e-3) at 6-21% more evaluations. On bench/likelihood.py's images it costs 49% more (nfe 122 ->
182) and moves bits/dim by 3e-5, onto the value of a rtol=atol=1e-8 solve (within ~1e-6); the
official design is off by those 3e-5. Only the norm differs; step factors and the initial-step
formula follow scipy.

References:
  Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021, Sec. 4.3 and App. D.2.
  Chen et al., "Neural Ordinary Differential Equations", NeurIPS 2018 (change of variables).
  Grathwohl et al., "FFJORD", ICLR 2019 (Hutchinson trace estimator).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Optional

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import checks, ode_stepper
from score_jax import sde as sde_lib
from score_jax.errors import InvalidInputError, SolverError

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

HUTCHINSON = ("rademacher", "gaussian", "exact")
METHODS = ("auto", "diffeqsolve", "stepped")

__all__ = ["Likelihood", "BitsPerDim", "TracedLikelihood", "SolverError", "log_likelihood", "bpd",
           "error_norm", "ERROR_CONTROLS", "traced_log_likelihood", "HUTCHINSON", "METHODS",
           "resolve_method"]


class Likelihood(NamedTuple):
    """logp [B] in nats at t = eps, endpoint z = x(T) [B, ...], nfe = drift+divergence evals."""

    logp: Array
    z: Array
    nfe: int


class BitsPerDim(NamedTuple):
    """bpd [B] with the official offset, endpoint z [B, ...], nfe as in `Likelihood`."""

    bpd: Array
    z: Array
    nfe: int


def drift_and_divergence(sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array,
                         noise: Optional[Array]) -> tuple[Array, Array]:
    """Probability-flow drift [B, ...] and its divergence [B] at x [B, ...], t [B], from one VJP.

    noise [B, ...] gives Hutchinson's estimate noise^T J noise; noise=None gives the exact trace
    from D basis-vector VJPs, which assumes (as every score network in eval mode does) that
    examples do not interact, i.e. the Jacobian is block-diagonal over the batch.
    """
    drift = lambda x_: sde.reverse(score_fn, probability_flow=True).sde(x_, t)[0]
    f, vjp_fn = jax.vjp(drift, x)
    axes = tuple(range(1, x.ndim))
    if noise is not None:
        (v_jac,) = vjp_fn(noise)
        return f, jnp.sum(v_jac * noise, axis=axes)
    dim = math.prod(x.shape[1:])
    basis = jnp.eye(dim, dtype=x.dtype).reshape((dim, 1) + x.shape[1:])
    (rows,) = jax.vmap(vjp_fn)(jnp.broadcast_to(basis, (dim,) + x.shape))   # rows[i] = e_i^T J
    return f, jnp.einsum("ibi->b", rows.reshape(dim, x.shape[0], dim))


class _AugmentedDrift(eqx.Module):
    """Vector field of (x, delta_logp): (f~, div f~). A module so that jit caches on it."""

    sde: Any = eqx.field(static=True)
    score_fn: ScoreFn
    per_example: bool = eqx.field(static=True)

    def __call__(self, t: Array, y: tuple[Array, Array], noise: Optional[Array]):
        x, _ = y
        if self.per_example:  # one example without its batch axis: give the network a batch of 1
            x = x[None]
            noise = None if noise is None else noise[None]
        f, div = drift_and_divergence(self.sde, self.score_fn, x,
                                      jnp.full(x.shape[:1], t, x.dtype), noise)
        if self.per_example:
            return f[0], div[0]
        return f, div


def resolve_method(method: str) -> str:
    """'auto' -> 'stepped' on CPU (conv VJPs in compiled loops are slow), else 'diffeqsolve'."""
    if method not in METHODS:
        raise InvalidInputError(f"method: unknown solver {method!r}; valid names are {list(METHODS)}.")
    if method == "auto":
        return "stepped" if jax.default_backend() == "cpu" else "diffeqsolve"
    return method


def error_norm(scaled: tuple[Array, Array]) -> Array:
    """Step-error norm [] of scaled errors (x [B, ...], delta logp [B]): worst example and part.

    Per example, the RMS over the D data components and the one log-density component are taken
    apart and the larger counts; then the worst example counts. One example alone ([...], []), as
    under per_example=True, is the same formula. Both solvers use it (module doc, "Error control").
    """
    x_err, logp_err = scaled
    x_rms = jnp.sqrt(jnp.mean(jnp.square(x_err.reshape(logp_err.shape + (-1,))), axis=-1))
    return jnp.max(jnp.maximum(x_rms, jnp.abs(logp_err)))


# error_control names -> step-error norms: 'per_part' (default, module doc "Error control") or
# 'rms', the official scipy RK45 semantics (one RMS over all B (D + 1) components): fewer steps,
# the log-density least controlled.
ERROR_CONTROLS = {"per_part": error_norm, "rms": ode_stepper.rms_norm}


# Evaluations outside diffrax's step counter (first-same-as-last: six per attempt): diffrax 0.7.2
# makes one more, measured by counting score calls (tests/test_likelihood.py checks it).
_DIFFRAX_EXTRA_NFE = 1
_DIFFRAX_STAGES = 6


class TracedLikelihood(NamedTuple):
    """Result of the traceable solve: logp [B], z [B, ...], nfe [] int32, ok [] bool (success)."""

    logp: Array
    z: Array
    nfe: Array
    ok: Array


def traced_log_likelihood(sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, noise: Optional[Array], *,
                          rtol: Any = 1e-5, atol: Any = 1e-5, eps: Any = 1e-5,
                          per_example: bool = False, max_steps: int = 4096,
                          error_control: str = "per_part") -> TracedLikelihood:
    """log p_eps(x) [B] as one traceable diffrax program, for use inside the caller's (sharded) jit.

    Same maths as `log_likelihood(method='diffeqsolve')` without the host-side checks: the caller
    must check `ok` (False: max_steps hit or non-finite values) once outside jit. noise [B, ...] is
    the Hutchinson noise, or None for the exact divergence. With per_example=False the batch is one
    ODE state, so sharding x over its batch axis needs no per-example control flow.
    `error_control` names the step-error norm, as in `log_likelihood`.
    """
    vf = _AugmentedDrift(sde, score_fn, per_example)
    norm = ERROR_CONTROLS[error_control]
    t0, t1, rtol, atol = (jnp.asarray(v, x.dtype) for v in (eps, sde.T, rtol, atol))

    def single(y0, noise):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vf), diffrax.Dopri5(), t0=t0, t1=t1, dt0=None, y0=y0, args=noise,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=norm),
            saveat=diffrax.SaveAt(t1=True), max_steps=max_steps, throw=False)
        y1 = jax.tree_util.tree_map(lambda a: a[0], sol.ys)
        return y1, sol.stats["num_steps"], sol.result == diffrax.RESULTS.successful

    y0 = (x, jnp.zeros(x.shape[:1], x.dtype))
    solve = jax.vmap(single) if per_example else single
    (z, delta), num_steps, ok = solve(y0, noise)
    # A vmapped while loop evaluates every example until the slowest is done: count its steps.
    nfe = _DIFFRAX_EXTRA_NFE + _DIFFRAX_STAGES * jnp.max(num_steps)
    logp = sde.prior_logp(z) + delta
    return TracedLikelihood(logp=logp, z=z, nfe=nfe, ok=jnp.all(ok) & jnp.all(jnp.isfinite(logp)))


_traced_log_likelihood_jit = eqx.filter_jit(traced_log_likelihood)


def _solve_diffrax(sde, score_fn, x, noise, eps, rtol, atol, per_example, max_steps,
                   error_control):
    """Host wrapper of `traced_log_likelihood`: (logp, z, nfe), raising SolverError on failure."""
    # Tolerances and eps as arrays: traced, so changing them does not recompile.
    rtol, atol, eps_a = (jnp.asarray(v, x.dtype) for v in (rtol, atol, eps))
    out = _traced_log_likelihood_jit(sde, score_fn, x, noise, rtol=rtol, atol=atol, eps=eps_a,
                                     per_example=per_example, max_steps=max_steps,
                                     error_control=error_control)
    nfe = int(out.nfe)
    if not bool(out.ok):
        reason = (f"hit max_steps={max_steps}; raise max_steps or loosen rtol/atol"
                  if nfe >= _DIFFRAX_EXTRA_NFE + _DIFFRAX_STAGES * max_steps
                  else "diffrax reported a failed solve or a non-finite result")
        raise SolverError(f"ODE solve from t0={eps} to t1={sde.T}: {reason} (non-finite scores "
                          f"also end this way).")
    return out.logp, out.z, nfe


@functools.partial(jax.jit, static_argnums=0)
def _add_prior(sde: sde_lib.SDE, z: Array, delta: Array) -> Array:
    """log p_T(z) + delta logp [B], one compiled call rather than several eager ops."""
    return sde.prior_logp(z) + delta


def _draw_noise(key: Array, x: Array, hutchinson: str) -> Optional[Array]:
    if hutchinson == "rademacher":
        return jax.random.rademacher(key, x.shape, dtype=x.dtype)
    if hutchinson == "gaussian":
        return jax.random.normal(key, x.shape, x.dtype)
    return None


def _validate(sde, score_fn, x, hutchinson, rtol, atol, eps) -> None:
    checks.check_sde(sde)
    checks.lookup("hutchinson", hutchinson, dict.fromkeys(HUTCHINSON))
    checks.check_eps(sde, eps)
    checks.check_positive("rtol", rtol)
    checks.check_positive("atol", atol)
    x = checks.check_data(x)
    checks.check_score_fn(score_fn, x.shape, x.dtype)


def log_likelihood(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, *,
                   hutchinson: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5,
                   eps: float = 1e-5, per_example: bool = False, method: str = "auto",
                   max_steps: int = 4096, error_control: str = "per_part") -> Likelihood:
    """log p_eps(x) [B] in nats by the probability-flow ODE from eps to T, for x [B, ...].

    Args:
      key: PRNG key for the Hutchinson noise, drawn once per solve (unused for 'exact').
      score_fn: score_fn(x [B, ...], t [B]) -> [B, ...]; a pytree such as
        `jax.tree_util.Partial(apply, params)` (models.score.get_score_fn) is traced, not
        re-compiled when its parameters change; a plain closure compiles once per closure object.
      hutchinson: 'rademacher' or 'gaussian' (unbiased estimators), 'exact' (D VJPs; small D).
      rtol, atol: Dormand-Prince tolerances, applied to the data x and to delta logp separately,
        per example (module doc, "Error control"); on 16-D Gaussian mixtures the default 1e-5
        leaves under 1e-3 nats of truncation error, 1e-6 under 3e-4.
      eps: start time of the ODE; the result is the density of the data perturbed to time eps.
      per_example: one adaptive step size per example instead of one for the batch (module doc).
      method: 'auto', 'diffeqsolve' or 'stepped' (module doc).
      max_steps: limit on step attempts.
      error_control: 'per_part' (default: data RMS and log-density error apart, per example) or
        'rms' (the official scipy semantics: one RMS over the whole batch state; fewer steps, a
        less controlled log-density; module doc, "Error control").

    Returns:
      Likelihood(logp [B], z [B, ...], nfe): nfe = the number of (batched) drift+divergence
      evaluations the solver made, from its own step count.

    Raises:
      ValueError: unknown hutchinson/method name, eps outside (0, T), bad x or score_fn shape.
      SolverError: the solve hit max_steps, its step size collapsed, or the result is non-finite.
    """
    x = jnp.asarray(x)
    _validate(sde, score_fn, x, hutchinson, rtol, atol, eps)
    error_control = checks.lookup("error_control", error_control, ERROR_CONTROLS)
    method = resolve_method(method)
    noise = _draw_noise(key, x, hutchinson)
    if method == "stepped":
        y0 = (x, jnp.zeros(x.shape[:1], x.dtype))
        sol = ode_stepper.solve(_AugmentedDrift(sde, score_fn, per_example), y0, float(eps),
                                float(sde.T), noise, rtol=rtol, atol=atol,
                                norm=ERROR_CONTROLS[error_control],
                                max_steps=max_steps, batched=per_example)
        (z, delta), nfe = sol.y1, sol.nfe
        logp = _add_prior(sde, z, delta)
    else:
        logp, z, nfe = _solve_diffrax(sde, score_fn, x, noise, eps, rtol, atol, per_example,
                                      max_steps, error_control)
    if not bool(jnp.all(jnp.isfinite(logp))):
        raise SolverError(f"log_likelihood: non-finite result for examples "
                          f"{np.flatnonzero(~np.isfinite(np.asarray(logp))).tolist()}; check "
                          f"score_fn for inf/nan.")
    return Likelihood(logp=logp, z=z, nfe=nfe)


def bpd(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, *, centered: bool = False,
        inverse_scaler_slope: Optional[float] = None, **kwargs: Any) -> BitsPerDim:
    """Bits/dim [B] of x [B, ...] with the official offset: -logp / (D log 2) + log2(slope) + 8.

    x must be UNIFORMLY DEQUANTISED 8-bit data: (pixels + U[0, 1)) / 256 in [0, 1] (centered=False,
    offset +8), or that mapped to [-1, 1] by 2y - 1 (centered=True, inverse-scaler slope 1/2,
    offset +7). The +8 converts a density over [0, 1] into a probability of 8-bit values, which is a
    valid (upper-bound) bits/dim only for dequantised inputs; the raw pixels k/255 (or k/256) put
    all mass on a grid, where a continuous density can grow without bound and bits/dim comes out
    meaningless, often negative (the official code does not say this).

    Args:
      centered: data scaled to [-1, 1] (slope 1/2) instead of [0, 1] (slope 1).
      inverse_scaler_slope: d(inverse scaler)/dx, overriding `centered` for other scalings.
      **kwargs: as `log_likelihood` (hutchinson, rtol, atol, eps, per_example, method, max_steps,
        error_control).

    Returns:
      BitsPerDim(bpd [B], z [B, ...], nfe).

    References:
      Song et al. 2021, App. D.2; Theis, van den Oord & Bethge, "A note on the evaluation of
      generative models", ICLR 2016 (dequantisation).
    """
    if inverse_scaler_slope is None:
        slope = 0.5 if centered else 1.0
    elif centered:
        raise InvalidInputError(f"give either centered=True or inverse_scaler_slope="
                                f"{inverse_scaler_slope}, not both.")
    elif not inverse_scaler_slope > 0:
        raise InvalidInputError(f"inverse_scaler_slope must be positive, got {inverse_scaler_slope}.")
    else:
        slope = float(inverse_scaler_slope)
    logp, z, nfe = log_likelihood(key, sde, score_fn, x, **kwargs)
    dim = math.prod(x.shape[1:])
    bits = -logp / (math.log(2.0) * dim) + math.log2(slope) + 8.0
    return BitsPerDim(bpd=bits, z=z, nfe=nfe)

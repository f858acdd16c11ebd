"""Host-stepped adaptive Dormand-Prince 5(4) ODE solver: one compiled call per step attempt.

Why it exists: on XLA:CPU (jax 0.10) a vector-field VJP through convolutions inside a compiled loop
(`while_loop`, hence `diffrax.diffeqsolve`, whose Runge-Kutta stages are themselves a loop) runs
about 10x slower than the same work as separate jitted calls (DESIGN.md, "Known trap"). Here each
call unrolls all seven stages, the error estimate, accept/reject and the next step size in one XLA
program without loops, and Python loops over the calls; the host reads one status word per step.

The controller is scipy's `RK45` (the solver of the official score_sde likelihood): Hairer's initial
step (two evaluations), error scale `atol + rtol max(|y|, |y_new|)` per element, safety 0.9, step
factors clipped to [0.2, 10], no growth right after a rejection, failure when the step falls below
10 ulp of t. So the number of function evaluations is `2 + 6 * attempts` (first-same-as-last), as
scipy's `nfev`. The error norm is a parameter: `rms_norm` (default) is scipy's RMS over every
element of the state pytree; a caller may pass its own (score_jax.likelihood does, so that its
log-density component is not drowned by the data). It has the signature of diffrax's
`PIDController(norm=...)`, so one function can serve both solvers.

References:
  Dormand & Prince, "A family of embedded Runge-Kutta formulae", J. Comp. Appl. Math. 6 (1980).
  Hairer, Norsett & Wanner, "Solving Ordinary Differential Equations I", Sec. II.4 (initial step).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from score_jax.errors import InvalidInputError, SolverError

Array = jax.Array
PyTree = Any
VectorField = Callable[[Array, PyTree, PyTree], PyTree]   # vf(t [], y, args) -> dy/dt like y

RUNNING, DONE, STEP_TOO_SMALL = 0, 1, 2

# Dormand-Prince 5(4) tableau, as scipy.integrate.RK45.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = ((),
      (1 / 5,),
      (3 / 40, 9 / 40),
      (44 / 45, -56 / 15, 32 / 9),
      (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
      (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656))
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR, _ERROR_EXPONENT = 0.9, 0.2, 10.0, -1 / 5


class StepperState(NamedTuple):
    """Solver state between host calls (per-example fields gain a leading [B] under `batched`)."""

    t: Array          # [] current time
    y: PyTree         # state at t
    f: PyTree         # vf(t, y), reused as the first stage (first-same-as-last)
    h: Array          # [] absolute size of the next step to try
    rejected: Array   # [] bool, the step being attempted was rejected before (no growth)
    status: Array     # [] int32: RUNNING, DONE or STEP_TOO_SMALL
    finite: Array     # [] bool, the last error estimate was finite
    accepted: Array   # [] int32 accepted steps


class Solution(NamedTuple):
    """Endpoint y1 at t1 and measured counts: nfe = batched vector-field evaluations."""

    y1: PyTree
    nfe: int
    num_steps: int     # step attempts, accepted + rejected (the host loop's iterations)
    num_accepted: np.ndarray  # [] int, or [B] per example under `batched`


Norm = Callable[[PyTree], Array]   # scaled error (or state) pytree -> [] non-negative


def rms_norm(tree: PyTree) -> Array:
    """Root mean square [] over every element of every leaf (scipy's and diffrax's default)."""
    leaves = jax.tree_util.tree_leaves(tree)
    total = sum(jnp.sum(jnp.square(leaf)) for leaf in leaves)
    size = sum(leaf.size for leaf in leaves)
    return jnp.sqrt(total / size)


def _combine(y: PyTree, h: Array, coeffs: tuple, ks: list) -> PyTree:
    """y + h sum_j coeffs[j] ks[j], skipping zero coefficients at trace time."""
    terms = [(c, k) for c, k in zip(coeffs, ks) if c != 0.0]

    def leaf(y_leaf, *k_leaves):
        acc = sum(c * k for (c, _), k in zip(terms, k_leaves))
        return y_leaf + (h * acc).astype(y_leaf.dtype)

    return jax.tree_util.tree_map(leaf, y, *[k for _, k in terms])


def _initial_step(vf: VectorField, t0: Array, y0: PyTree, f0: PyTree, t1: Array, args: PyTree,
                  rtol: float, atol: float, norm: Norm) -> Array:
    """Hairer's starting step size (one extra evaluation), as scipy's `select_initial_step`."""
    scale = jax.tree_util.tree_map(lambda y: atol + jnp.abs(y) * rtol, y0)
    d0 = norm(jax.tree_util.tree_map(jnp.divide, y0, scale))
    d1 = norm(jax.tree_util.tree_map(jnp.divide, f0, scale))
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = jnp.where(small, 1e-6, 0.01 * d0 / jnp.where(small, 1.0, d1))
    h0 = jnp.minimum(h0, t1 - t0)
    y1 = jax.tree_util.tree_map(lambda y, f: y + (h0 * f).astype(y.dtype), y0, f0)
    f1 = vf(t0 + h0, y1, args)
    diff = jax.tree_util.tree_map(lambda a, b, s: (a - b) / s, f1, f0, scale)
    d2 = norm(diff) / h0
    dmax = jnp.maximum(d1, d2)
    tiny = dmax <= 1e-15
    h1 = jnp.where(tiny, jnp.maximum(1e-6, h0 * 1e-3),
                   (0.01 / jnp.where(tiny, 1.0, dmax)) ** (1 / 5))
    return jnp.minimum(jnp.minimum(100 * h0, h1), t1 - t0)


def _init(vf: VectorField, t0: Array, y0: PyTree, t1: Array, args: PyTree, rtol: float,
          atol: float, norm: Norm) -> StepperState:
    f0 = vf(t0, y0, args)
    h = _initial_step(vf, t0, y0, f0, t1, args, rtol, atol, norm)
    return StepperState(t=t0, y=y0, f=f0, h=h, rejected=jnp.array(False),
                        status=jnp.array(RUNNING, jnp.int32), finite=jnp.array(True),
                        accepted=jnp.array(0, jnp.int32))


def _attempt(vf: VectorField, state: StepperState, t1: Array, args: PyTree, rtol: float,
             atol: float, norm: Norm) -> StepperState:
    """One Dormand-Prince step attempt with scipy's RK45 accept/reject and step-size update."""
    t, y = state.t, state.y
    min_step = 10 * jnp.abs(jnp.nextafter(t, jnp.inf) - t)
    too_small = state.rejected & ~(state.h >= min_step)   # a NaN step size fails here too
    h = jnp.maximum(state.h, min_step)
    t_new = jnp.minimum(t + h, t1)
    h = t_new - t
    ks = [state.f]
    for c, a in zip(_C[1:], _A[1:]):
        ks.append(vf(t + c * h, _combine(y, h, a, ks), args))
    y_new = _combine(y, h, _B, ks)
    f_new = vf(t_new, y_new, args)
    ks.append(f_new)
    err = _combine(jax.tree_util.tree_map(jnp.zeros_like, y), h, _E, ks)
    scaled = jax.tree_util.tree_map(
        lambda e, a, b: e / (atol + rtol * jnp.maximum(jnp.abs(a), jnp.abs(b))), err, y, y_new)
    err_norm = norm(scaled)
    finite = jnp.isfinite(err_norm)
    accept = finite & (err_norm < 1)
    power = jnp.where(finite & (err_norm > 0), err_norm, 1.0) ** _ERROR_EXPONENT
    grow = jnp.where(err_norm == 0, _MAX_FACTOR, jnp.minimum(_MAX_FACTOR, _SAFETY * power))
    grow = jnp.where(state.rejected, jnp.minimum(1.0, grow), grow)
    shrink = jnp.where(finite, jnp.maximum(_MIN_FACTOR, _SAFETY * power), _MIN_FACTOR)
    pick = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(accept, a, b), new, old)
    status = jnp.where(accept & (t_new >= t1), DONE, RUNNING)
    status = jnp.where(too_small, STEP_TOO_SMALL, status).astype(jnp.int32)
    new = StepperState(t=jnp.where(accept, t_new, t), y=pick(y_new, y), f=pick(f_new, state.f),
                       h=h * jnp.where(accept, grow, shrink), rejected=~accept, status=status,
                       finite=finite, accepted=state.accepted + accept.astype(jnp.int32))
    # Finished (or failed) solves stay frozen: per-example solves keep stepping the others.
    running = state.status == RUNNING
    return jax.tree_util.tree_map(lambda a, b: jnp.where(running, a, b), new, state)


@eqx.filter_jit
def _init_call(vf, t0, y0, t1, args, rtol, atol, norm, batched):
    fn = functools.partial(_init, vf, rtol=rtol, atol=atol, norm=norm)
    if batched:
        return jax.vmap(fn, in_axes=(None, 0, None, 0))(t0, y0, t1, args)
    return fn(t0, y0, t1, args)


@eqx.filter_jit
def _step_call(vf, state, t1, args, rtol, atol, norm, batched):
    fn = functools.partial(_attempt, vf, rtol=rtol, atol=atol, norm=norm)
    if batched:
        return jax.vmap(fn, in_axes=(0, None, 0))(state, t1, args)
    return fn(state, t1, args)


def solve(vf: VectorField, y0: PyTree, t0: float, t1: float, args: PyTree = None, *,
          rtol: float = 1e-5, atol: float = 1e-5, norm: Norm = rms_norm, max_steps: int = 4096,
          batched: bool = False) -> Solution:
    """Integrate dy/dt = vf(t, y, args) from t0 to t1 > t0 with adaptive Dormand-Prince 5(4).

    Args:
      vf: vector field; an `equinox.Module` or a hashable callable, so that the compiled step is
        reused between calls (a fresh closure recompiles).
      y0: initial state pytree. With `batched`, every leaf of y0 and args has a leading [B] axis and
        each example gets its own step sizes (vf then sees one example, without that axis).
      norm: error norm [] of the scaled error pytree (also used by the initial step), `rms_norm`
        by default (scipy's); a module-level function, so the compiled step is reused. Under
        `batched` it sees one example.
      max_steps: limit on step attempts (host iterations).

    Returns:
      Solution(y1, nfe, num_steps, num_accepted); nfe counts batched vector-field evaluations,
      `2 + 6 * num_steps` (under `batched`, finished examples are still evaluated, masked).

    Raises:
      SolverError: the step limit was hit, or the step size fell below 10 ulp of t (usually
        because the vector field returned non-finite values).
    """
    if not t1 > t0:
        raise InvalidInputError(f"solve: needs t1 > t0, got t0={t0}, t1={t1}.")
    if not (isinstance(max_steps, (int, np.integer)) and max_steps >= 1):
        raise InvalidInputError(f"max_steps must be a positive integer, got {max_steps!r}.")
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(y0))
    # Times and tolerances are traced, so changing them does not recompile.
    t0_a, t1_a = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    rtol, atol = jnp.asarray(rtol, dtype), jnp.asarray(atol, dtype)
    state = _init_call(vf, t0_a, y0, t1_a, args, rtol, atol, norm, batched)
    steps = 0
    while steps < max_steps:
        state = _step_call(vf, state, t1_a, args, rtol, atol, norm, batched)
        steps += 1
        status = np.asarray(state.status)
        if np.all(status != RUNNING):
            break
    _check(state, steps, max_steps, t0, t1)
    return Solution(y1=state.y, nfe=2 + 6 * steps, num_steps=steps,
                    num_accepted=np.asarray(state.accepted))


def _check(state: StepperState, steps: int, max_steps: int, t0: float, t1: float) -> None:
    status, t = np.asarray(state.status), np.asarray(state.t)
    finite = np.asarray(state.finite)
    hint = ("" if np.all(finite) else
            " The error estimate was non-finite: the vector field (score) returned inf/nan.")
    if np.any(status == STEP_TOO_SMALL):
        raise SolverError(f"ODE solve from t0={t0} to t1={t1}: step size fell below 10 ulp of t at "
                          f"t={np.min(t)} after {steps} attempts.{hint}")
    if np.any(status == RUNNING):
        raise SolverError(f"ODE solve from t0={t0} to t1={t1}: hit max_steps={max_steps} at "
                          f"t={np.min(t)}; raise max_steps or loosen rtol/atol.{hint}")

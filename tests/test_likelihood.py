"""Probability-flow log-likelihood and bits/dim against closed forms (tests/gmm.py, box data).

Compiles dominate the runtime, so each exact score function is built once per (SDE, dimension) and
reused (same object -> jit cache hit); it also counts its own calls, the independent NFE check.
"""

import ast
import functools
import math
import pathlib

import gmm
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import erfc

from score_jax import likelihood as lik
from score_jax import sde as sde_lib
from score_jax.ode_stepper import SolverError

SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE()}
MIXTURES = {2: gmm.two_d_mixture(), 16: gmm.image_mixture()}
EPS = 1e-5
CALLS = {}


@functools.lru_cache(maxsize=None)
def counted_score(sde_name, dim):
    """Exact mixture score for (SDE, dim) that counts its calls in CALLS[(sde_name, dim)]."""
    exact = MIXTURES[dim].score_fn(SDES[sde_name])

    def bump():
        CALLS[(sde_name, dim)] = CALLS.get((sde_name, dim), 0) + 1

    def score_fn(x, t):
        jax.debug.callback(bump)
        return exact(x, t)

    return score_fn


def data(dim, n=4):
    return jnp.asarray(MIXTURES[dim].sample(np.random.default_rng(dim), n)[0])


@functools.partial(jax.jit, static_argnums=(0, 1))  # one compile instead of dozens of eager ops
def analytic_logp(sde, dim, x, z):
    """log p_eps(x) + log prior(z) - log p_T(z): what the exact ODE computes, in closed form."""
    mix, ones = MIXTURES[dim], jnp.ones(x.shape[:1], x.dtype)
    return (mix.log_prob(sde, x, EPS * ones) + sde.prior_logp(z)
            - mix.log_prob(sde, z, sde.T * ones))


def exact_ll(sde_name, dim, **kwargs):
    x = data(dim)
    out = lik.log_likelihood(jax.random.PRNGKey(0), SDES[sde_name], counted_score(sde_name, dim), x,
                             hutchinson="exact", **kwargs)
    return x, out


@pytest.mark.parametrize("dim", [2, 16])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_exact_divergence_matches_closed_form(sde_name, dim):
    sde = SDES[sde_name]
    # At the default rtol=atol=1e-5. The log-density has its own error norm: with the official
    # all-component RMS norm this 16-D case left up to 6.8e-3 nats (subvp, stepped, float32).
    x, (logp, z, _) = exact_ll(sde_name, dim)
    err = np.abs(np.asarray(logp - analytic_logp(sde, dim, x, z)))
    assert err.max() < 1e-3, err
    x, (logp, z, _) = exact_ll(sde_name, dim, rtol=1e-6, atol=1e-6)
    err = np.abs(np.asarray(logp - analytic_logp(sde, dim, x, z)))
    assert err.max() < 3e-4, err


@pytest.mark.parametrize("sde_name", list(SDES))
def test_diffeqsolve_controls_the_logp_error_in_16d(sde_name):
    # diffrax's PID controller takes the same norm but not scipy's exact step sequence: up to
    # 1.3e-3 nats on these examples (with diffrax's default all-component RMS norm: up to 6.4e-3
    # over random batches of four, 8/8 sub-VP batches above 1e-3).
    sde = SDES[sde_name]
    x, (logp, z, _) = exact_ll(sde_name, 16, method="diffeqsolve")
    err = np.abs(np.asarray(logp - analytic_logp(sde, 16, x, z)))
    assert err.max() < 2e-3, err


def test_error_norm_takes_each_example_and_part_alone():
    # Example 0: data RMS sqrt((9 + 16) / 2) = 3.54, logp 0.5; example 1: data 0, logp -4.
    x_err = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    assert float(lik.error_norm((x_err, jnp.array([0.5, -4.0])))) == pytest.approx(4.0)
    assert float(lik.error_norm((x_err, jnp.array([0.5, 1.0])))) == pytest.approx(12.5 ** 0.5)
    # One example without its batch axis (per_example=True): same formula.
    assert float(lik.error_norm((x_err[0], jnp.array(-6.0)))) == pytest.approx(6.0)


def test_rms_error_control_is_scipys_norm_and_takes_fewer_steps():
    # 'rms' is one RMS over all B (D + 1) components, scipy RK45's norm: sqrt((9+16+0.25+16)/6).
    x_err = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    rms = lik.ERROR_CONTROLS["rms"]((x_err, jnp.array([0.5, -4.0])))
    assert float(rms) == pytest.approx((41.25 / 6) ** 0.5)
    # Never larger than the per-part norm, so it accepts longer steps (here fewer evaluations);
    # on the 16-D mixture it stays near the closed form at the official design's accuracy.
    sde = SDES["vp"]
    x, (logp, z, nfe_rms) = exact_ll("vp", 16, error_control="rms")
    _, (_, _, nfe_part) = exact_ll("vp", 16)
    assert nfe_rms <= nfe_part
    err = np.abs(np.asarray(logp - analytic_logp(sde, 16, x, z)))
    assert err.max() < 1e-2, err


def test_float64_error_shrinks_with_tolerance():
    sde = SDES["vp"]
    with jax.enable_x64(True):
        x = data(2).astype(jnp.float64)
        errs = []
        for tol in (1e-5, 1e-7, 1e-9):
            logp, z, _ = lik.log_likelihood(jax.random.PRNGKey(0), sde, counted_score("vp", 2), x,
                                            hutchinson="exact", rtol=tol, atol=tol)
            assert logp.dtype == jnp.float64
            errs.append(np.abs(np.asarray(logp - analytic_logp(sde, 2, x, z))).max())
    assert errs[0] < 1e-3 and errs[1] < errs[0] / 10 and errs[2] < errs[1] / 10, errs
    assert errs[2] < 1e-7, errs


@pytest.mark.parametrize("hutchinson", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(hutchinson):
    copies = 64
    x0, (exact, _, _) = exact_ll("vp", 2)
    x = jnp.tile(x0, (copies, 1))   # each copy gets its own noise draw inside one solve
    logp, _, _ = lik.log_likelihood(jax.random.PRNGKey(3), SDES["vp"], counted_score("vp", 2), x,
                                    hutchinson=hutchinson)
    est = np.asarray(logp).reshape(copies, x0.shape[0])
    mean, se = est.mean(0), est.std(0, ddof=1) / math.sqrt(copies)
    assert np.all(se > 0)
    # + 2e-3: both solves carry their own solver error at rtol=1e-5.
    assert np.all(np.abs(mean - np.asarray(exact)) < 3 * se + 2e-3), (mean, exact, se)


@pytest.mark.parametrize("method", ["stepped", "diffeqsolve"])
def test_nfe_equals_counted_score_calls(method):
    jax.effects_barrier()
    CALLS.clear()
    _, (_, _, nfe) = exact_ll("vp", 2, method=method)
    jax.effects_barrier()
    assert nfe == CALLS[("vp", 2)] and nfe > 20


def test_methods_and_per_example_agree():
    sde, x = SDES["vp"], data(2)
    results = {}
    for method in ("stepped", "diffeqsolve"):
        for per_example in (False, True):
            _, out = exact_ll("vp", 2, method=method, per_example=per_example)
            results[method, per_example] = out
    ref_logp, ref_z, _ = results["stepped", False]
    np.testing.assert_allclose(ref_logp, analytic_logp(sde, 2, x, ref_z), atol=1e-3)
    for logp, z, nfe in results.values():
        np.testing.assert_allclose(logp, ref_logp, atol=1e-3)
        np.testing.assert_allclose(z, ref_z, atol=1e-3)
        assert nfe > 20


# --- bits/dim of dequantised data -------------------------------------------------------------
LEVELS = 64                               # each pixel uniform over 64 consecutive 8-bit levels
FIRST_LEVEL = np.array([20, 100, 150, 60])  # per pixel, images [B, 2, 2, 1]


def _box_terms(x, t, lo, hi, sde):
    """u, v and the tail-safe Phi(u) - Phi(v) of box data U[lo, hi] (lo/hi [1, 2, 2, 1]) at t."""
    ones = jnp.ones(x.shape[:1], x.dtype)
    a, std = sde.marginal_prob(ones, t)
    a, std = a[:, None, None, None], std[:, None, None, None]
    u, v = (x - a * lo) / std, (x - a * hi) / std
    flip = (u + v) > 0                  # Phi(u) - Phi(v) = Phi(-v) - Phi(-u): the small tail
    cdf = lambda w: 0.5 * erfc(-w / math.sqrt(2.0))   # plain erfc: cheaper to compile than ndtr
    mass = jnp.where(flip, cdf(-v) - cdf(-u), cdf(u) - cdf(v))
    return u, v, mass, a, std


def box_log_density(x, t, lo, hi, sde):
    """log p_t(x) [B]: per pixel (Phi(u) - Phi(v)) / (a (hi - lo))."""
    _, _, mass, a, _ = _box_terms(x, t, lo, hi, sde)
    return jnp.sum(jnp.log(mass) - jnp.log(a * (hi - lo)), axis=(1, 2, 3))


def box_score(x, t, lo, hi, sde):
    """Exact score [B, 2, 2, 1]: (phi(u) - phi(v)) / (std (Phi(u) - Phi(v))) per pixel."""
    u, v, mass, _, std = _box_terms(x, t, lo, hi, sde)
    return (jnp.exp(-0.5 * u ** 2) - jnp.exp(-0.5 * v ** 2)) / (math.sqrt(2 * math.pi) * std * mass)


def dequantised_pixels(n=3):
    """Dequantised [0, 1] images from levels at least 8 bins inside each box, [n, 2, 2, 1]."""
    rng = np.random.default_rng(7)
    levels = FIRST_LEVEL + rng.integers(8, LEVELS - 8, (n, 4))
    return ((levels + rng.random((n, 4))) / 256.0).reshape(n, 2, 2, 1).astype(np.float32)


@pytest.mark.parametrize("centered", [False, True])
def test_bpd_of_dequantised_data_is_the_discrete_entropy(centered):
    # Density on [0, 1]: 256/64 inside each pixel's box, so -log2 p / D + 8 = log2(64) = 6 bits;
    # on [-1, 1] the density halves and the offset is +7: again 6 bits.
    sde = SDES["vp"]
    lo = (FIRST_LEVEL / 256.0).reshape(1, 2, 2, 1)
    hi = lo + LEVELS / 256.0
    x = dequantised_pixels()
    if centered:
        x, lo, hi = 2 * x - 1, 2 * lo - 1, 2 * hi - 1
    score_fn = jax.tree_util.Partial(box_score, lo=jnp.asarray(lo, jnp.float32),
                                     hi=jnp.asarray(hi, jnp.float32), sde=sde)
    bits, z, _ = lik.bpd(jax.random.PRNGKey(0), sde, score_fn, jnp.asarray(x), centered=centered,
                         hutchinson="exact")
    # bpd uses the prior N(0, I) for z, not the exact p_T (whose mean is a(T) (lo + hi) / 2 != 0).
    prior_gap = jax.jit(lambda z: sde.prior_logp(z) - box_log_density(
        z, jnp.ones(z.shape[:1]), lo, hi, sde))(z)
    expected = math.log2(LEVELS) - np.asarray(prior_gap) / (math.log(2) * 4)
    np.testing.assert_allclose(bits, expected, atol=2e-4)
    assert np.all(np.abs(bits - math.log2(LEVELS)) < 1e-2)
    if centered:
        same, _, _ = lik.bpd(jax.random.PRNGKey(0), sde, score_fn, jnp.asarray(x),
                             inverse_scaler_slope=0.5, hutchinson="exact")
        np.testing.assert_allclose(same, bits, atol=1e-6)


# --- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(hutchinson="hutch"), "hutchinson"),
    (dict(eps=0.0), "eps"),
    (dict(eps=1.0), "eps"),
    (dict(method="rk4"), "method"),
    (dict(rtol=0.0), "rtol"),
    (dict(error_control="max"), "error_control"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lik.log_likelihood(jax.random.PRNGKey(0), SDES["vp"], counted_score("vp", 2), data(2),
                           **kwargs)


def test_bad_score_shape_and_scaling_raise():
    with pytest.raises(ValueError, match="score_fn"):
        lik.log_likelihood(jax.random.PRNGKey(0), SDES["vp"], lambda x, t: x[:, :1], data(2))
    with pytest.raises(ValueError, match="inverse_scaler_slope"):
        lik.bpd(jax.random.PRNGKey(0), SDES["vp"], counted_score("vp", 2), data(2),
                centered=True, inverse_scaler_slope=0.5)


@pytest.mark.parametrize("method", ["stepped", "diffeqsolve"])
def test_step_limit_raises(method):
    with pytest.raises(SolverError, match="max_steps"):
        exact_ll("vp", 2, method=method, max_steps=3)


def test_non_finite_score_raises():
    with pytest.raises(SolverError, match="non-finite|inf/nan"):
        lik.log_likelihood(jax.random.PRNGKey(0), SDES["vp"], lambda x, t: x / jnp.sum(t * 0.0),
                           data(2), hutchinson="exact")


def test_likelihood_layer_imports_no_training_stack():
    root = pathlib.Path(lik.__file__).parent
    for module in ("likelihood.py", "ode_stepper.py"):
        tree = ast.parse((root / module).read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in (node.names if isinstance(node, ast.Import) else [node])
                 if isinstance(alias, ast.alias)}
        names |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module}
        assert not names & {"flax", "optax", "orbax", "tensorflow"}, (module, names)


def _toy_field(t, y, args):
    return jnp.cos(3 * t) * y - 0.5 * y ** 3 + args


def test_stepper_reproduces_scipy_rk45():
    # The stepper implements scipy's RK45 controller (the official solver): same steps, same nfev.
    from scipy import integrate
    from score_jax import ode_stepper
    y0, shift = np.array([0.3, -1.2, 2.0]), np.array([0.1, 0.0, -0.2])
    ref = integrate.solve_ivp(lambda t, y: np.cos(3 * t) * y - 0.5 * y ** 3 + shift, (0.0, 2.0),
                              y0, method="RK45", rtol=1e-6, atol=1e-8)
    with jax.enable_x64(True):
        sol = ode_stepper.solve(_toy_field, jnp.asarray(y0), 0.0, 2.0, jnp.asarray(shift),
                                rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(sol.y1, ref.y[:, -1], rtol=1e-9, atol=1e-12)
    assert sol.nfe == ref.nfev and sol.num_accepted == ref.t.size - 1

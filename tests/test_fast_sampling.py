"""Few-step samplers against independent oracles: convergence order, mixture statistics, NFE counts.

Oracles: a high-accuracy scipy DOP853 solve (float64, tolerance 1e-13) of the probability-flow
ODE dx = [f - g^2 score / 2] dt written from `sde.sde` for the convergence orders; the closed-form
mixture (tests/gmm.py) for scores and target statistics; a host-side counter of executed score_fn
calls for NFE; closed forms for the logSNR inverse.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from score_jax import fast_sampling as fs
from score_jax import grid_search
from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax.errors import InvalidInputError, SolverError
from tests import gmm
from tests.test_sampling import BIAS, Counter, assert_mixture_stats

EPS = 1e-3
SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE()}
# Overlapping components: a smooth, non-Gaussian score, so every solver reaches its asymptotic
# order at moderate NFE (a single Gaussian cancels DPM-Solver++-3's h^3 term: slope ~4 there).
SMOOTH = gmm.GaussianMixture(weights=np.array([0.3, 0.7]),
                             means=np.array([[-0.6, 0.4], [0.5, -0.3]]),
                             stds=np.array([[0.5, 0.4], [0.4, 0.6]]), shape=(2,))
MIXTURE = gmm.two_d_mixture()
# One counting score_fn per SDE for the whole module: the same callable hits the compilation cache.
COUNTERS = {name: Counter(MIXTURE.score_fn(sde)) for name, sde in SDES.items()}


def _counted_sample(sde_name, shape, **kwargs):
    """fast_sample with the module's counting score_fn: -> (x, nfe returned, calls executed)."""
    counter = COUNTERS[sde_name]
    before = counter.count()
    x, used = sampling.fast_sample(jax.random.PRNGKey(3), SDES[sde_name], counter, shape,
                                   **kwargs)
    return x, used, counter.count() - before

# (solver, options, expected order, NFE ladder); ladders sit in each solver's asymptotic range,
# single-step order 3 on NFE = 2 mod 3 (the pattern [3, ..., 3, 2] keeps the order).
ORDER_CASES = [
    ("ddim", {}, 1, [16, 32, 64]),
    ("euler", {}, 1, [16, 32, 64]),
    ("dpm_solver", dict(order=1), 1, [16, 32, 64]),
    ("heun", {}, 2, [17, 33, 65]),
    ("dpm_solver", dict(order=2, method="singlestep"), 2, [16, 32, 64]),
    ("dpm_solver", dict(order=2, method="multistep"), 2, [16, 32, 64]),
    ("dpm_solver++", dict(order=2, method="singlestep"), 2, [16, 32, 64]),
    ("dpm_solver++", dict(order=2, method="multistep"), 2, [16, 32, 64]),
    ("dpm_solver", dict(order=3, method="singlestep"), 3, [65, 128, 257]),
    ("dpm_solver", dict(order=3, method="multistep"), 3, [128, 256, 512]),
    ("dpm_solver++", dict(order=3, method="singlestep"), 3, [65, 128, 257]),
    ("dpm_solver++", dict(order=3, method="multistep"), 3, [64, 128, 256]),
    # UniPC's corrector raises the predictor's order by one (Zhao et al. 2023, Theorem 3.3).
    ("unipc", dict(order=1), 2, [16, 32, 64]),
    ("unipc", dict(order=2), 3, [32, 64, 128]),
    ("unipc", dict(order=2, prediction="noise"), 3, [32, 64, 128]),
    ("unipc", dict(order=3), 4, [32, 64, 128]),
]


@functools.lru_cache(maxsize=None)
def _reference(sde_name):
    """(x_T [16, 2], score_fn, x at eps by scipy's DOP853) in float64; call inside enable_x64."""
    sde = SDES[sde_name]
    score_fn = jax.tree_util.Partial(SMOOTH.score_fn(sde))
    x_T = sde.prior_sampling(jax.random.PRNGKey(1), (16, 2)).astype(jnp.float64)

    @jax.jit
    def vf(t, y):
        y = y.reshape(x_T.shape)
        t = jnp.full(y.shape[:1], t)
        drift, diffusion = sde.sde(y, t)
        return (drift - 0.5 * (diffusion ** 2)[:, None] * score_fn(y, t)).reshape(-1)

    sol = integrate.solve_ivp(lambda t, y: np.asarray(vf(t, y)), (sde.T, EPS),
                              np.asarray(x_T).reshape(-1), method="DOP853", rtol=1e-13,
                              atol=1e-13)
    assert sol.success
    return x_T, score_fn, sol.y[:, -1].reshape(x_T.shape)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("solver,options,order,ladder", ORDER_CASES,
                         ids=[f"{c[0]}-{'-'.join(map(str, c[1].values()))}" for c in ORDER_CASES])
def test_convergence_order(sde_name, solver, options, order, ladder):
    sde = SDES[sde_name]
    with jax.enable_x64(True):
        x_T, score_fn, ref = _reference(sde_name)
        errors = []
        for nfe in ladder:
            x, used = fs.fast_sample(jax.random.PRNGKey(0), sde, score_fn, x_T.shape,
                                     solver=solver, nfe=nfe, eps=EPS, denoise=False,
                                     x_init=x_T, **options)
            assert used == nfe
            errors.append(np.sqrt(np.mean((np.asarray(x) - ref) ** 2)))
    slope = -np.polyfit(np.log(ladder), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.35, (slope, errors)


# (solver, options, nfe) at moderate NFE: first-order methods need more steps for the same bias.
MIXTURE_CASES = [
    ("ddim", {}, 60), ("ddim", dict(eta=1.0), 100), ("euler", {}, 60), ("heun", {}, 51),
    ("heun", dict(s_churn=10.0), 61), ("dpm_solver", {}, 32),
    ("dpm_solver", dict(order=2, method="multistep"), 25), ("dpm_solver++", {}, 25),
    ("dpm_solver++", dict(order=3, method="singlestep", skip_type="time_uniform"), 30),
    ("unipc", {}, 20), ("unipc", dict(order=2, prediction="noise", variant="bh1"), 20),
    ("adaptive_sde", {}, 2000),
]


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("solver,options,nfe", MIXTURE_CASES,
                         ids=[f"{c[0]}-{c[2]}-{len(c[1])}" for c in MIXTURE_CASES])
def test_samples_match_mixture_and_count_nfe(sde_name, solver, options, nfe):
    x, used, calls = _counted_sample(sde_name, (5000, 2), solver=solver, nfe=nfe, **options)
    assert used == calls
    if solver == "adaptive_sde":
        assert 20 < used <= nfe and used % 2 == 1     # 2 per iteration + denoising
    else:
        assert used == nfe
    assert_mixture_stats(x, MIXTURE, bias=BIAS)


@pytest.mark.parametrize("solver,options", [
    ("heun", {}), ("euler", {}), ("ddim", {}), ("dpm_solver", dict(order=3)),
    ("dpm_solver", dict(order=2)), ("dpm_solver++", dict(order=3, method="multistep")),
    ("unipc", {}), ("unipc", dict(order=2, prediction="noise"))])
@pytest.mark.parametrize("nfe", [2, 3, 5, 10, 11])
@pytest.mark.parametrize("denoise", [True, False])
def test_nfe_is_exact_for_any_budget(solver, options, nfe, denoise):
    x, used, calls = _counted_sample("vp", (4, 2), solver=solver, nfe=nfe, denoise=denoise,
                                     **options)
    assert used == nfe == calls
    assert np.all(np.isfinite(np.asarray(x)))


def test_ddim_on_the_edm_schedule_is_edm_euler():
    # DDIM is Euler's method on x / alpha in the noise level sigma / alpha (Karras et al. 2022).
    sde = SDES["subvp"]
    run = functools.partial(fs.fast_sample, jax.random.PRNGKey(0), sde, MIXTURE.score_fn(sde),
                            (64, 2), nfe=12)
    x_ddim, _ = run(solver="ddim", skip_type="edm", rho=5.0)
    x_euler, _ = run(solver="euler", rho=5.0)
    np.testing.assert_allclose(np.asarray(x_ddim), np.asarray(x_euler), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_schedule_matches_marginal_prob_and_inverts_exactly(sde_name):
    sde = SDES[sde_name]
    t = np.linspace(EPS, 1.0, 50)
    alpha, sigma = fs.alpha_sigma(sde, t)
    mean, std = sde.marginal_prob(jnp.ones((50, 1)), jnp.asarray(t, jnp.float32))
    np.testing.assert_allclose(alpha, np.asarray(mean)[:, 0], rtol=1e-5)
    np.testing.assert_allclose(sigma, np.asarray(std), rtol=1e-5)
    np.testing.assert_allclose(fs.time_of_log_snr(sde, np.log(alpha / sigma)), t, rtol=1e-9)
    for skip in fs.SKIP_TYPES:
        grid = fs.time_grid(sde, 7, EPS, skip)
        assert grid[0] == sde.T and grid[-1] == EPS and np.all(np.diff(grid) < 0)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("level", [0.05, 0.5, 5.0])
def test_eps_at_noise_level_is_that_level_of_marginal_prob(sde_name, level):
    sde = SDES[sde_name]
    t = fs.eps_at_noise_level(sde, level)
    mean, std = sde.marginal_prob(jnp.ones((1, 1)), jnp.full((1,), t, jnp.float32))
    np.testing.assert_allclose(float(std[0]) / float(mean[0, 0]), level, rtol=1e-4)
    with pytest.raises(InvalidInputError, match="no noise level of this SDE"):
        fs.eps_at_noise_level(sde, 1e5)


def test_searched_grid_lowers_the_error_on_other_draws():
    # The search's objective, measured on prior draws it never saw, against the converged solve;
    # one SDE (the search is SDE-agnostic: it only moves logSNR knots) to keep the suite fast.
    sde = SDES["subvp"]
    score_fn = jax.tree_util.Partial(MIXTURE.score_fn(sde))
    grid = grid_search.search_grid(jax.random.PRNGKey(1), sde, score_fn, (512, 2), nfe=8,
                                   sweeps=2, reference_nfe=64)
    assert grid.shape == (8,) and grid[0] == sde.T and grid[-1] == EPS
    run = functools.partial(fs.fast_sample, jax.random.PRNGKey(2), sde, score_fn, (512, 2),
                            solver="unipc")
    reference = np.asarray(run(nfe=64)[0])

    def error(**grid_option):
        return np.mean(np.linalg.norm(np.asarray(run(nfe=8, **grid_option)[0]) - reference,
                                      axis=1))

    searched, uniform = error(grid=tuple(grid)), error()
    assert searched < 0.5 * uniform, (searched, uniform)     # measured: 0.24


def test_given_grid_is_the_grid_used():
    sde = SDES["subvp"]
    run = functools.partial(fs.fast_sample, jax.random.PRNGKey(0), sde, MIXTURE.score_fn(sde),
                            (64, 2), solver="unipc", nfe=9)
    x_spaced, _ = run(skip_type="edm")
    x_given, _ = run(grid=tuple(fs.time_grid(sde, 8, EPS, "edm")))
    np.testing.assert_array_equal(np.asarray(x_given), np.asarray(x_spaced))
    for bad in ((1.0, 0.5, EPS), tuple(np.linspace(1.0, EPS, 9)[::-1]), "fine"):
        with pytest.raises(InvalidInputError, match="grid must be"):
            run(grid=bad)
    with pytest.raises(InvalidInputError, match="valid names are"):
        grid_search.search_grid(jax.random.PRNGKey(0), sde, MIXTURE.score_fn(sde), (8, 2),
                                nfe=5, solver="heun")


def test_new_parameters_do_not_recompile():
    sde = SDES["vp"]

    def scaled(scale, x, t):
        return scale * MIXTURE.score(sde, x, t)

    run = functools.partial(fs.fast_sample, jax.random.PRNGKey(0), sde, shape=(8, 2),
                            solver="dpm_solver", nfe=10)
    run(score_fn=jax.tree_util.Partial(scaled, jnp.float32(1.0)))
    size = fs._plan_program._cache_size()
    x, _ = run(score_fn=jax.tree_util.Partial(scaled, jnp.float32(0.5)), nfe=12)  # same bucket
    assert fs._plan_program._cache_size() == size
    assert np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(solver="rk4", nfe=10), "valid names are"),
    (dict(solver="heun", nfe=1), "nfe must be an integer >= 2"),
    (dict(solver="heun", nfe=0, denoise=False), "nfe must be an integer >= 1"),
    (dict(solver="ddim", nfe=10.0), "nfe must be an integer"),
    (dict(solver="dpm_solver", nfe=10, order=4), "order must be 1, 2 or 3"),
    (dict(solver="dpm_solver", nfe=10, method="adams"), "valid methods"),
    (dict(solver="dpm_solver++", nfe=10, skip_type="cosine"), "valid skip types"),
    (dict(solver="ddim", nfe=10, order=2), "valid options are"),
    (dict(solver="ddim", nfe=10, eta=-1.0), "eta must be a non-negative"),
    (dict(solver="adaptive_sde", nfe=10, rel_tol=0.0), "rel_tol must be a positive"),
    (dict(solver="ddim", nfe=10, eps=0.0), "eps must be a float"),
    (dict(solver="unipc", nfe=10, prediction="x0"), "valid values are"),
    (dict(solver="unipc", nfe=10, variant="bh3"), "valid values are"),
])
def test_bad_input_raises(kwargs, match):
    sde = SDES["ve"]
    with pytest.raises(InvalidInputError, match=match):
        fs.fast_sample(jax.random.PRNGKey(0), sde, MIXTURE.score_fn(sde), (4, 2), **kwargs)


def test_adaptive_budget_exhausted_raises():
    sde = SDES["vp"]
    with pytest.raises(SolverError, match="raise nfe"):
        fs.fast_sample(jax.random.PRNGKey(0), sde, MIXTURE.score_fn(sde), (64, 2),
                       solver="adaptive_sde", nfe=9)

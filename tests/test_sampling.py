"""Samplers against exact Gaussian-mixture scores: sample statistics, NFE counts, invertibility, errors.

Oracles: the closed-form mixture (tests/gmm.py) for scores and target statistics, an independent
host-side counter of score_fn calls for NFE, closed forms of the Gaussian probability flow, and the
Langevin step-size rule as an invariant of one corrector step.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import sampling
from score_jax import sde as sde_lib
from tests import gmm

N = 200            # discretisation steps: the measured bias below is for this N
N_SAMPLES = 5000   # 2-D samples per run
SDES = {"ve": sde_lib.VESDE(N=N), "vp": sde_lib.VPSDE(N=N), "subvp": sde_lib.SubVPSDE(N=N)}
MIXTURE = gmm.two_d_mixture()
# Discretisation bias allowed on top of 5 Monte-Carlo standard errors. Measured with 20,000 samples
# at N = 200 over every predictor/corrector pair and the ODE: |proportion error| <= 0.011,
# |mean error| <= 0.018, |variance / true variance - 1| <= 0.092 (VE reverse diffusion; the
# rest <= 0.065), each of these including its own Monte-Carlo error.
BIAS = {"prop": 0.015, "mean": 0.03, "var": 0.1}


class Counter:
    """score_fn wrapper that counts the evaluations it actually executes, on the host."""

    def __init__(self, score_fn):
        self.calls = 0
        self._score_fn = score_fn

    def _tick(self):
        self.calls += 1

    def __call__(self, x, t):
        jax.debug.callback(self._tick)
        return self._score_fn(x, t)

    def count(self) -> int:
        jax.effects_barrier()
        return self.calls


def assert_mixture_stats(x, mixture, *, bias=BIAS):
    """Nearest-mean assignment, then proportions, means and variances within 5 SE + bias."""
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    assert np.all(np.isfinite(x))
    n = x.shape[0]
    dist = ((x[:, None, :] - mixture.means[None]) ** 2).sum(-1)
    k = dist.argmin(1)
    props = np.bincount(k, minlength=len(mixture.weights)) / n
    w = mixture.weights
    np.testing.assert_array_less(np.abs(props - w), 5 * np.sqrt(w * (1 - w) / n) + bias["prop"])
    for j in range(len(w)):
        xs = x[k == j]
        nj = xs.shape[0]
        s = mixture.stds[j]
        mean_tol = 5 * s / np.sqrt(nj) + bias["mean"]
        np.testing.assert_array_less(np.abs(xs.mean(0) - mixture.means[j]), mean_tol,
                                     err_msg=f"component {j} mean")
        var_tol = 5 * np.sqrt(2.0 / (nj - 1)) + bias["var"]
        np.testing.assert_array_less(np.abs(xs.var(0, ddof=1) / s ** 2 - 1), var_tol,
                                     err_msg=f"component {j} variance")


def _pc_cases():
    for name in SDES:
        for predictor in ("euler_maruyama", "reverse_diffusion", "ancestral_sampling"):
            if predictor == "ancestral_sampling" and name == "subvp":
                continue
            for corrector in ("none", "langevin"):
                yield pytest.param(name, predictor, corrector, id=f"{name}-{predictor}-{corrector}")
    yield pytest.param("vp", "reverse_diffusion", "ald", id="vp-reverse_diffusion-ald")


@pytest.mark.parametrize("sde_name,predictor,corrector", list(_pc_cases()))
def test_pc_sample_matches_mixture_and_counts_nfe(sde_name, predictor, corrector):
    sde = SDES[sde_name]
    score = Counter(MIXTURE.score_fn(sde))
    x, nfe = sampling.pc_sample(jax.random.PRNGKey(0), sde, score, (N_SAMPLES, 2),
                                predictor=predictor, corrector=corrector)
    assert x.shape == (N_SAMPLES, 2)
    assert nfe == score.count() == N * (1 + (corrector != "none"))
    assert_mixture_stats(x, MIXTURE)


@pytest.mark.parametrize("sde_name,solver", [("ve", "dopri5"), ("vp", "tsit5"), ("subvp", "euler")])
def test_ode_sample_matches_mixture_and_counts_nfe(sde_name, solver):
    # dopri5/tsit5: adaptive, first-same-as-last; euler: N fixed steps (nfe N + 1 with denoising).
    sde = SDES[sde_name]
    score = Counter(MIXTURE.score_fn(sde))
    x, nfe = sampling.ode_sample(jax.random.PRNGKey(1), sde, score, (N_SAMPLES, 2), solver=solver)
    assert nfe == score.count()
    if solver == "euler":
        assert nfe == N + 1
    else:
        assert 20 < nfe < 1000
    assert_mixture_stats(x, MIXTURE)


def test_16d_mixture_pc_and_ode():
    mixture = gmm.image_mixture()
    sde = sde_lib.VPSDE(N=N)
    shape = (1000,) + mixture.shape
    x, _ = sampling.pc_sample(jax.random.PRNGKey(2), sde, mixture.score_fn(sde), shape,
                              predictor="reverse_diffusion", corrector="langevin")
    assert x.shape == shape
    assert_mixture_stats(x, mixture)
    ve = sde_lib.VESDE(N=N)
    x, _ = sampling.ode_sample(jax.random.PRNGKey(3), ve, mixture.score_fn(ve), shape)
    assert_mixture_stats(x, mixture)


def test_probability_flow_predictor_is_deterministic_and_matches():
    sde = SDES["vp"]
    score = MIXTURE.score_fn(sde)
    z = sde.prior_sampling(jax.random.PRNGKey(4), (N_SAMPLES, 2))
    run = functools.partial(sampling.pc_sample, sde=sde, score_fn=score, shape=(N_SAMPLES, 2),
                            predictor="reverse_diffusion", corrector="none",
                            probability_flow=True, x_init=z)
    x, _ = run(jax.random.PRNGKey(4))
    assert_mixture_stats(x, MIXTURE)
    # The starting point is the only randomness: another key gives the same samples.
    y, _ = run(jax.random.PRNGKey(5))
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_langevin_step_size_uses_global_batch_norms():
    # One Langevin step: x_mean - x = e * score with one step size e for the whole batch, and
    # x - x_mean = sqrt(2 e) z with e = 2 alpha (snr mean|z| / mean|score|)^2, which gives
    # e = sqrt(alpha) snr mean|x - x_mean| / mean|score| without knowing z.
    sde = sde_lib.VPSDE(N=N)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 3, 2)), jnp.float32)
    score_fn = lambda y, t: -y * jnp.arange(1.0, 7.0).reshape(6, 1, 1)  # per-example scales
    t = jnp.full((6,), 0.5)
    snr = 0.2
    new_x, x_mean = sampling.langevin(jax.random.PRNGKey(0), sde, score_fn, x, t, snr=snr,
                                      n_steps=1, probability_flow=False)
    grad = np.asarray(score_fn(x, t))
    e = np.asarray(x_mean - x) / grad
    np.testing.assert_allclose(e, e.flat[0], rtol=1e-4)
    alpha = 1.0 - (0.1 + (N - 1) // 2 * (20.0 - 0.1) / (N - 1)) / N   # 1 - beta_i at i = 99
    norm = lambda v: np.linalg.norm(np.asarray(v).reshape(6, -1), axis=1).mean()
    expected = np.sqrt(alpha) * snr * norm(new_x - x_mean) / norm(grad)
    np.testing.assert_allclose(e.flat[0], expected, rtol=1e-4)


def test_project_hook_and_corrector_only_nfe():
    # Corrector-only sampling with an inpainting-style clamp of the first coordinate: the hook runs
    # after the corrector and after the (empty) predictor of every step, with that step's t; its
    # x_mean is what denoise returns; nfe is N * n_steps. (Replacement inpainting is not exact
    # conditional sampling, so no statistics here.)
    sde = sde_lib.VPSDE(N=50)
    score = Counter(MIXTURE.score_fn(sde))
    seen = []

    def project(key, x, x_mean, t):
        jax.debug.callback(lambda t0: seen.append(float(t0)), t[0])
        mean, std = sde.marginal_prob(jnp.full_like(x, -2.0), t)
        noisy = mean + sde_lib.batch_broadcast(std, x) * jax.random.normal(key, x.shape)
        return x.at[:, 0].set(noisy[:, 0]), x_mean.at[:, 0].set(-2.0)

    x, nfe = sampling.pc_sample(jax.random.PRNGKey(6), sde, score, (256, 2), predictor="none",
                                corrector="langevin", n_steps=3, project=project, eps=1e-3)
    assert nfe == score.count() == 50 * 3
    np.testing.assert_allclose(seen, np.repeat(np.linspace(1.0, 1e-3, 50), 2), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(x[:, 0]), -2.0)
    assert np.all(np.isfinite(np.asarray(x)))
    assert sampling.pc_nfe(sde, "none", "none", 5) == 0
    assert sampling.pc_nfe(sde, "euler_maruyama", "ald", 2) == 150


@pytest.mark.parametrize("sde_name", ["ve"])
def test_ode_decode_inverts_encode(sde_name):
    sde = sde_lib.get_sde(sde_name + "sde")
    x, _ = MIXTURE.sample(np.random.default_rng(0), 64)
    score = Counter(MIXTURE.score_fn(sde))
    z, nfe_enc = sampling.ode_encode(sde, score, x, rtol=1e-6, atol=1e-6)
    assert nfe_enc == score.count()
    x_back, nfe_dec = sampling.ode_decode(sde, score, z, rtol=1e-6, atol=1e-6)
    assert nfe_enc + nfe_dec == score.count()
    np.testing.assert_allclose(np.asarray(x_back), x, rtol=0, atol=1e-4)


def test_ode_encode_of_gaussian_is_the_closed_form_linear_map():
    # For data N(mu, diag(s^2)) every VP marginal is N(a(t) mu, a(t)^2 s^2 + 1 - a(t)^2), with
    # a(t) = exp(-t^2 (b1 - b0) / 4 - t b0 / 2), and the flow is affine per coordinate:
    # z = a(T) mu + (x - a(eps) mu) sqrt(v(T) / v(eps)).
    gauss = gmm.GaussianMixture(weights=np.array([1.0]), means=np.array([[0.5, -1.0]]),
                                stds=np.array([[0.3, 2.0]]), shape=(2,))
    sde, eps = sde_lib.VPSDE(), 1e-3
    x, _ = gauss.sample(np.random.default_rng(1), 64)
    z, _ = sampling.ode_encode(sde, gauss.score_fn(sde), x, rtol=1e-6, atol=1e-6, eps=eps)
    a = lambda t: np.exp(-t ** 2 * (20.0 - 0.1) / 4 - t * 0.1 / 2)
    mu, s = gauss.means[0], gauss.stds[0]
    v = lambda t: a(t) ** 2 * s ** 2 + 1 - a(t) ** 2
    expected = a(1.0) * mu + (x - a(eps) * mu) * np.sqrt(v(1.0) / v(eps))
    np.testing.assert_allclose(np.asarray(z), expected, rtol=1e-4, atol=1e-4)


def test_ode_solve_hitting_max_steps_is_reported():
    sde = SDES["vp"]
    with pytest.raises(sampling.ODESolveError, match="max_steps=3"):
        sampling.ode_sample(jax.random.PRNGKey(0), sde, MIXTURE.score_fn(sde), (4, 2), max_steps=3)


@pytest.mark.parametrize("kwargs,match", [
    (dict(eps=0.0), "eps"), (dict(eps=1.0), "eps"), (dict(eps=-1e-3), "eps"),
    (dict(predictor="leapfrog"), "predictor='leapfrog'.*reverse_diffusion"),
    (dict(corrector="hmc"), "corrector='hmc'.*langevin"),
    (dict(snr=-0.1), "snr"), (dict(n_steps=0), "n_steps"),
    (dict(shape=(16,)), "shape"), (dict(shape=(0, 2)), "shape"),
    (dict(score_fn=lambda x, t: x[:, :1]), r"score_fn.*\(8, 2\).*\(8, 1\)"),
    (dict(sde=sde_lib.SubVPSDE(N=25), predictor="ancestral_sampling"), "sub-VP"),
    (dict(predictor="ancestral_sampling", probability_flow=True), "probability_flow"),
    (dict(x_init=jnp.zeros((3, 2))), "x_init"),
])
def test_pc_sample_rejects_bad_inputs(kwargs, match):
    kwargs = dict(kwargs)
    sde = kwargs.pop("sde", sde_lib.VPSDE(N=25))
    args = dict(score_fn=MIXTURE.score_fn(sde), shape=(8, 2))
    args.update(kwargs)
    score_fn, shape = args.pop("score_fn"), args.pop("shape")
    with pytest.raises(ValueError, match=match):
        sampling.pc_sample(jax.random.PRNGKey(0), sde, score_fn, shape, **args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(solver="rk4"), "solver='rk4'.*dopri5"), (dict(eps=2.0), "eps"),
    (dict(rtol=0.0), "rtol"), (dict(max_steps=0), "max_steps"),
])
def test_ode_sample_rejects_bad_inputs(kwargs, match):
    sde = sde_lib.VESDE(N=10)
    with pytest.raises(ValueError, match=match):
        sampling.ode_sample(jax.random.PRNGKey(0), sde, MIXTURE.score_fn(sde), (8, 2), **kwargs)
    with pytest.raises(ValueError, match="score_fn"):
        sampling.ode_decode(sde, lambda x, t: x.sum(), jnp.zeros((8, 2)))


def test_unknown_names_in_tables():
    with pytest.raises(ValueError, match="valid names"):
        sampling.get_predictor("nope")
    assert sampling.get_corrector("LANGEVIN") is sampling.langevin
    assert set(sampling.PREDICTORS) == {"euler_maruyama", "reverse_diffusion",
                                        "ancestral_sampling", "none"}
    assert set(sampling.CORRECTORS) == {"langevin", "ald", "none"}


def test_sampling_imports_no_framework():
    import ast
    import pathlib
    tree = ast.parse(pathlib.Path(sampling.__file__).read_text())
    names = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
             for a in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module}
    assert not names & {"flax", "optax", "orbax", "tensorflow"}

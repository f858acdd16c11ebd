"""EDM's formulation (score_jax/edm.py): preconditioning, loss, samplers and bits/dim against closed forms.

Oracle: for Gaussian data N(0, s^2 I) the optimal denoiser is D*(x; sigma) = s^2 / (s^2 + sigma^2) x.
A stand-in network that outputs exactly the F of D* (through the preconditioning) makes the loss,
the samples and the likelihood closed-form; the network part is then main.py's end-to-end run.
"""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_MODEL, main_env, run_main
from score_jax import edm, fast_sampling, likelihood, losses, sampling
from score_jax import sde as sde_lib
from score_jax.errors import InvalidInputError
from score_jax.models import score as mscore

SDE = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0)   # EDM's noise range
EPS = 1e-5


def optimal_apply(precond: edm.Preconditioning, s: float):
    """A flax-like apply_fn whose output is the F of D*(x; sigma) for data N(0, s^2 I)."""
    def apply_fn(variables, net_x, c_noise, train=False, rngs=None):
        sigma = jnp.exp(4.0 * c_noise)
        c_skip, c_out, c_in, _ = (sde_lib.batch_broadcast(c, net_x)
                                  for c in precond.coefficients(sigma))
        x = net_x / c_in
        d = s ** 2 / (s ** 2 + sde_lib.batch_broadcast(sigma, x) ** 2) * x
        return (d - c_skip * x) / c_out
    return apply_fn


@pytest.mark.parametrize("sigma_data", [0.5, 0.75])
def test_preconditioning_unit_variance(sigma_data):
    """Data of std sigma_data: the network's input and its training target have unit variance."""
    precond = edm.Preconditioning(sigma_data)
    sigma = jnp.asarray([0.002, 0.1, 1.0, 80.0])
    y = sigma_data * jax.random.normal(jax.random.PRNGKey(0), (4, 200_000))
    n = sde_lib.batch_broadcast(sigma, y) * jax.random.normal(jax.random.PRNGKey(1), y.shape)
    c_skip, c_out, c_in, c_noise = (sde_lib.batch_broadcast(c, y) for c in precond.coefficients(sigma))
    np.testing.assert_allclose(jnp.std(c_in * (y + n), axis=1), 1.0, rtol=0.01)
    target = (y - c_skip * (y + n)) / c_out
    np.testing.assert_allclose(jnp.std(target, axis=1), 1.0, rtol=0.01)
    np.testing.assert_allclose(c_noise[:, 0], np.log(np.asarray(sigma)) / 4, rtol=1e-6)
    # lambda(sigma) = 1 / c_out^2: the weighted denoiser loss is the unit target's loss.
    np.testing.assert_allclose(precond.loss_weight(sigma) * c_out[:, 0] ** 2, 1.0, rtol=1e-5)


@pytest.mark.parametrize("s", [0.5, 0.9])
def test_loss_of_optimal_denoiser_is_closed_form(s):
    """E lambda ||D* - y||^2 / dim = E_sigma s^2 (sigma^2 + sd^2) / (sd^2 (s^2 + sigma^2)), = 1 at s = sd."""
    precond = edm.Preconditioning(0.5)
    loss_fn = losses.get_loss_fn(SDE, optimal_apply(precond, s), train=False, reduce_mean=True,
                                 loss="edm", precond=precond, p_mean=-1.2, p_std=1.2)
    x = s * jax.random.normal(jax.random.PRNGKey(2), (40_000, 16))
    loss, _ = jax.jit(loss_fn)(jax.random.PRNGKey(3), {}, {}, x)
    # Gauss-Hermite in ln sigma ~ N(-1.2, 1.2^2).
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    sigma2 = np.exp(2 * (-1.2 + 1.2 * nodes))
    expected = np.sum(weights * s ** 2 * (sigma2 + 0.25) / (0.25 * (s ** 2 + sigma2))) / math.sqrt(2 * math.pi)
    assert float(loss) == pytest.approx(expected, rel=0.02)
    if s == 0.5:
        assert expected == pytest.approx(1.0)


def test_heun_schedule_is_edm_rho_schedule():
    """'heun' on EDM's VE SDE steps through EDM's sigma_i (Eq. 5, N = 18), the VE clock inverted."""
    plan = fast_sampling.build_plan(SDE, "heun", 35, EPS, True)
    t = np.array([row[0] for row in plan.rows])
    edm_sigmas = _edm_sigmas(18)[:-1]
    # Rows: Heun's two evaluations per step (17 steps), then the last Euler step to sigma = 0.
    np.testing.assert_allclose(SDE.sigma(t[0:34:2]), edm_sigmas[:-1], rtol=1e-9)
    np.testing.assert_allclose(SDE.sigma(t[1:34:2]), edm_sigmas[1:], rtol=1e-9)
    assert len(plan.rows) == 35 and t[-1] == EPS


def _edm_sigmas(n: int) -> np.ndarray:
    """EDM's rho = 7 schedule of n levels from 80 to sigma(eps), then 0 (Eq. 5)."""
    sigma_min, i = float(SDE.sigma(EPS)), np.arange(n)
    return np.append((80 ** (1 / 7) + i / (n - 1) * (sigma_min ** (1 / 7) - 80 ** (1 / 7))) ** 7, 0.0)


def _algorithm_2_on_gaussian(s: float, n: int, churn: float = 0.0, s_tmin: float = 0.0,
                             s_tmax: float = math.inf) -> tuple[float, float]:
    """(gain, variance): Karras et al.'s Algorithm 2 (Algorithm 1 when churn = 0) run in float64 on
    D*(x; sigma) = s^2 / (s^2 + sigma^2) x, where every step is linear: x_N = gain x_0 + noise."""
    sigmas = _edm_sigmas(n)
    gamma = min(churn / (n - 1), math.sqrt(2) - 1)
    slope = lambda x, sig: (x - s ** 2 / (s ** 2 + sig ** 2) * x) / sig  # noqa: E731  dx/dsigma
    gain, var = 1.0, 80.0 ** 2
    for cur, nxt in zip(sigmas[:-1], sigmas[1:]):
        hat = cur * (1 + gamma) if s_tmin <= cur <= s_tmax and gamma > 0 else cur
        var += hat ** 2 - cur ** 2
        d = slope(1.0, hat)
        step = 1.0 + (nxt - hat) * d
        if nxt > 0:
            step = 1.0 + (nxt - hat) * (d + slope(step, nxt)) / 2
        gain, var = gain * step, var * step ** 2
    return gain, var


def test_heun_is_algorithm_1():
    """Deterministic Heun from a fixed start equals Algorithm 1 in float64 (17 Heun steps + Euler)."""
    s = 0.5
    precond = edm.Preconditioning(0.5)
    score_fn = mscore.get_score_fn(SDE, optimal_apply(precond, s), {}, precond=precond)
    x_init = jnp.linspace(-160.0, 160.0, 8).reshape(2, 4)
    x, nfe = sampling.fast_sample(jax.random.PRNGKey(4), SDE, score_fn, (2, 4), solver="heun",
                                  nfe=35, eps=EPS, x_init=x_init)
    gain, _ = _algorithm_2_on_gaussian(s, 18)
    assert nfe == 35
    np.testing.assert_allclose(x, gain * x_init, rtol=2e-4, atol=1e-6)


@pytest.mark.parametrize("options", [dict(), dict(s_churn=40.0, s_min=0.05, s_max=50.0)],
                         ids=["deterministic", "stochastic"])
def test_samplers_reach_the_gaussian(options):
    """Samples of Algorithms 1 and 2 (EDM's ImageNet churn) at 100 steps on D* have the variance
    of Algorithm 2's float64 recursion, within 5% of s^2, and mean 0."""
    s = 0.5
    precond = edm.Preconditioning(0.5)
    score_fn = mscore.get_score_fn(SDE, optimal_apply(precond, s), {}, precond=precond)
    nfe = 199
    x, _ = sampling.fast_sample(jax.random.PRNGKey(4), SDE, score_fn, (4096, 4), solver="heun",
                                nfe=nfe, eps=EPS, **options)
    # fast_sampling divides S_churn by its Heun steps (n - 1), not by EDM's n (the last step to 0).
    _, var = _algorithm_2_on_gaussian(s, (nfe + 1) // 2, options.get("s_churn", 0.0),
                                      options.get("s_min", 0.0), options.get("s_max", math.inf))
    assert abs(float(jnp.mean(x))) < 0.02
    assert float(jnp.var(x)) == pytest.approx(var, rel=0.04)
    assert var == pytest.approx(s ** 2, rel=0.05)


def test_bits_per_dim_is_closed_form():
    """Probability flow of D*: x_sigma = x sqrt((s^2 + sigma^2) / (s^2 + sigma_eps^2)), so
    log p = log N(z; 0, smax^2) + dim/2 log((s^2 + smax^2) / (s^2 + sigma_eps^2))."""
    s, dim = 0.5, 4
    precond = edm.Preconditioning(0.5)
    score_fn = mscore.get_score_fn(SDE, optimal_apply(precond, s), {}, precond=precond)
    x = s * jax.random.normal(jax.random.PRNGKey(5), (8, dim))
    out = likelihood.bpd(jax.random.PRNGKey(6), SDE, score_fn, x, centered=True,
                         hutchinson="exact", rtol=1e-6, atol=1e-6, eps=EPS)
    ratio = (s ** 2 + 80.0 ** 2) / (s ** 2 + float(SDE.sigma(EPS)) ** 2)
    z = np.asarray(x, np.float64) * math.sqrt(ratio)
    logp = (-dim / 2 * math.log(2 * math.pi * 80.0 ** 2) - (z ** 2).sum(1) / (2 * 80.0 ** 2)
            + dim / 2 * math.log(ratio))
    np.testing.assert_allclose(out.bpd, -logp / (dim * math.log(2)) + 7, rtol=1e-4)


def test_misconfigurations_are_one_line_errors():
    precond = edm.Preconditioning(0.5)
    apply_fn = optimal_apply(precond, 0.5)
    with pytest.raises(InvalidInputError, match="preconditioning='edm'"):
        losses.get_loss_fn(SDE, apply_fn, train=True, loss="edm")
    with pytest.raises(InvalidInputError, match="training.sde='vesde'"):
        losses.get_loss_fn(sde_lib.VPSDE(), apply_fn, train=True, loss="edm", precond=precond)
    with pytest.raises(InvalidInputError, match="discrete 'smld'"):
        losses.get_loss_fn(SDE, apply_fn, train=True, loss="smld", precond=precond)
    with pytest.raises(InvalidInputError, match="p_std"):
        losses.get_loss_fn(SDE, apply_fn, train=True, loss="edm", precond=precond, p_std=0.0)
    with pytest.raises(InvalidInputError, match="sigma_data"):
        edm.Preconditioning(-1.0)
    with pytest.raises(InvalidInputError, match="valid names are"):
        edm.get_preconditioning("karras", 0.5)


def test_main_trains_samples_and_evaluates_edm_digits(tmp_path):
    """main.py end to end on configs/edm/digits_ddpmpp.py: train, EDM Heun samples, finite bits/dim."""
    env = main_env(tmp_path)
    common = ["--config=configs/edm/digits_ddpmpp.py", f"--workdir={tmp_path / 'work'}", *TINY_MODEL,
              "--config.training.n_iters=2", "--config.training.snapshot_freq=2",
              "--config.training.snapshot_sampling=False", "--config.sampling.nfe=5"]
    for mode, extra in (("train", []), ("sample", []),
                        ("eval", ["--config.eval.begin_ckpt=1", "--config.eval.end_ckpt=1",
                                  "--config.eval.enable_sampling=False", "--config.eval.enable_loss=False",
                                  "--config.eval.bpd_rtol=0.1", "--config.eval.bpd_atol=0.1"])):
        out = run_main([*common, f"--mode={mode}", *extra], env)
        assert out.returncode == 0, (mode, out.stderr[-3000:])
    with np.load(tmp_path / "work" / "sample" / "unconditional" / "samples.npz") as d:
        samples = d["samples"]
    assert samples.shape == (16, 8, 8, 1) and samples.dtype == np.uint8
    assert (tmp_path / "work" / "sample" / "unconditional" / "samples.png").is_file()
    entry = json.loads((tmp_path / "work" / "eval" / "summary.json").read_text())["ckpt_1"]
    assert entry["step"] == 2 and np.isfinite(entry["bpd"]) and entry["bpd"] > 0

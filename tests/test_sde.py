"""SDEs against the official score_sde values, independent closed forms and forward simulation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from conftest import RUN_OPTIMISED
from score_jax import sde as sde_lib

SDES = {
    "ve": sde_lib.VESDE(0.01, 50.0, 1000),
    "vp": sde_lib.VPSDE(0.1, 20.0, 1000),
    "subvp": sde_lib.SubVPSDE(0.1, 20.0, 1000),
}


@pytest.fixture(scope="module")
def ref(fixtures_dir):
    return dict(np.load(fixtures_dir / "sde_reference.npz"))


def _test_score(x, t):
    return -x / sde_lib.batch_broadcast(1.0 + t, x)


def _per_t(fn, ref):
    """Evaluate fn(x, t_batch) for each of the fixture's 7 times, stacking to [7, ...]."""
    x = jnp.asarray(ref["x"])
    outs = [fn(x, jnp.full((x.shape[0],), t, jnp.float32)) for t in ref["t"]]
    return [np.stack([np.asarray(o[i]) for o in outs]) for i in range(len(outs[0]))]


def _close(ours, theirs, rel=1e-4):
    theirs = np.asarray(theirs)
    atol = rel * max(np.max(np.abs(theirs)), 1e-12)
    np.testing.assert_allclose(ours, theirs, atol=atol, rtol=0)


@pytest.mark.parametrize("name", list(SDES))
def test_matches_official_values(name, ref):
    sde = SDES[name]
    rev = sde.reverse(_test_score)
    pf = sde.reverse(_test_score, probability_flow=True)
    methods = {"": sde.sde, "mean_std": sde.marginal_prob, "discretize_": sde.discretize,
               "reverse_": rev.sde, "pf_": pf.sde, "reverse_discretize_": rev.discretize,
               "pf_discretize_": pf.discretize}
    for prefix, fn in methods.items():
        a, b = _per_t(jax.jit(fn), ref)
        keys = ("mean", "std") if prefix == "mean_std" else (
            (prefix or "") + ("drift" if "discretize" not in prefix else "f"),
            (prefix or "") + ("diffusion" if "discretize" not in prefix else "G"))
        _close(a, ref[f"{name}/{keys[0]}"])
        _close(b, ref[f"{name}/{keys[1]}"])
    _close(sde.prior_logp(jnp.asarray(ref["z"])), ref[f"{name}/prior_logp"], rel=1e-6)
    assert sde.N == int(ref[f"{name}/N"]) and sde.T == float(ref[f"{name}/T"])


def test_discrete_tables_match_official(ref):
    _close(SDES["ve"].discrete_sigmas, ref["ve/discrete_sigmas"], rel=1e-6)
    for key in ["discrete_betas", "alphas", "alphas_cumprod", "sqrt_alphas_cumprod",
                "sqrt_1m_alphas_cumprod"]:
        _close(getattr(SDES["vp"], key), ref[f"vp/{key}"], rel=1e-6)


def _variance_ode(sde, t1):
    """Var(x_t | x_0) of the forward SDE, solving dV/dt = 2 k(t) V + g(t)^2 by variation of constants:
    V(t1) = int_0^t1 g(s)^2 exp(2 int_s^t1 k) ds, with k(t) the drift coefficient (drift = k(t) x)."""
    s = np.linspace(0.0, t1, 20001)
    drift, g = jax.jit(sde.sde)(jnp.ones((s.size, 1)), jnp.asarray(s, jnp.float32))
    k, g2 = np.asarray(drift[:, 0], np.float64), np.asarray(g, np.float64) ** 2
    big_k = integrate.cumulative_trapezoid(k, s, initial=0.0)
    return integrate.simpson(g2 * np.exp(2 * (big_k[-1] - big_k)), x=s)


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("t1", [0.1, 0.5, 1.0])
def test_marginal_std_solves_the_variance_ode(name, t1):
    """std(t)^2 is the solution of the moment ODE of the SDE (VE up to the sigma_min^2 offset)."""
    sde = SDES[name]
    var = _variance_ode(sde, t1)
    std = float(sde.marginal_prob(jnp.ones((1, 1)), jnp.array([t1]))[1][0])
    if name == "ve":  # the official VE kernel starts at sigma_min, not at 0
        var += sde.sigma_min ** 2
    np.testing.assert_allclose(std ** 2, var, rtol=1e-5)


@pytest.mark.parametrize("name", ["vp", "subvp"])
@pytest.mark.parametrize("t1", [0.05, 0.3, 1.0])
def test_vp_mean_coefficient_is_exp_of_half_integrated_beta(name, t1):
    sde = SDES[name]
    integral, _ = integrate.quad(lambda s: 0.1 + s * (20.0 - 0.1), 0.0, t1)
    mean, _ = sde.marginal_prob(jnp.ones((1, 3)), jnp.array([t1]))
    np.testing.assert_allclose(np.asarray(mean), np.exp(-0.5 * integral), rtol=1e-5)


def test_ddpm_discretisation_converges_to_vp_marginal():
    """log prod_i alpha_i tends to -int_0^t beta as N grows: the DDPM chain discretises the VP SDE."""
    def max_error(n):
        sde = sde_lib.VPSDE(0.1, 20.0, n)
        log_cumprod = np.cumsum(np.log(np.asarray(sde.alphas, np.float64)))
        t = np.arange(1, n + 1) / n
        return np.max(np.abs(log_cumprod + 0.1 * t + 0.5 * (20.0 - 0.1) * t ** 2))
    e1, e4 = max_error(1000), max_error(4000)
    assert e1 < 0.1 and e4 < e1 / 3  # first-order convergence: error ~ sum beta_i^2 / 2 ~ 1/N


def test_smld_discretisation_increments_sum_to_sigma():
    """The SMLD noise increments G_i^2 telescope to sigma_i^2."""
    sde = SDES["ve"]
    ts = (jnp.arange(sde.N) + 0.5) / (sde.N - 1)  # mid-cell, so the floor index is i exactly
    _, g = sde.discretize(jnp.zeros((sde.N, 1)), ts)
    np.testing.assert_allclose(np.cumsum(np.asarray(g, np.float64) ** 2),
                               np.asarray(sde.discrete_sigmas, np.float64) ** 2, rtol=1e-4)


# 2000 steps: worth XLA's optimisation passes (the three SDEs 14.5 -> 3.9 s).
@functools.partial(jax.jit, static_argnums=(0, 3), compiler_options=RUN_OPTIMISED)
def _simulate(sde, key, x0, steps, t1):
    """Fine Euler-Maruyama simulation of the forward SDE from x0 [B, D] to time t1."""
    dt = t1 / steps

    def body(i, carry):
        x, key = carry
        key, sub = jax.random.split(key)
        t = jnp.full((x.shape[0],), i * dt)
        drift, g = sde.sde(x, t)
        return x + drift * dt + g[:, None] * jnp.sqrt(dt) * jax.random.normal(sub, x.shape), key

    return jax.lax.fori_loop(0, steps, body, (x0, key))[0]


@pytest.mark.parametrize("name", list(SDES))
def test_gaussian_data_marginal_by_forward_simulation(name):
    """x_0 ~ N(m, s^2): the simulated x_t has mean a m and variance a^2 s^2 + std^2 - (VE) smin^2."""
    sde, n, m, s, t1 = SDES[name], 20000, 1.5, 0.5, 0.4
    key = jax.random.PRNGKey(0)
    x0 = m + s * jax.random.normal(jax.random.PRNGKey(1), (n, 2))
    xt = np.asarray(_simulate(sde, key, x0, 2000, t1))
    a, std = sde.marginal_prob(jnp.ones((1, 1)), jnp.array([t1]))
    a, var = float(a[0, 0]), float(std[0]) ** 2
    if name == "ve":
        var -= sde.sigma_min ** 2
    want_var = a ** 2 * s ** 2 + var
    se_mean = np.sqrt(want_var / n)
    np.testing.assert_allclose(xt.mean(0), a * m, atol=5 * se_mean + 2e-3 * abs(a * m))
    # Var of the sample variance ~ 2 var^2 / n; 5 standard errors plus the O(dt) EM bias.
    np.testing.assert_allclose(xt.var(0), want_var, rtol=5 * np.sqrt(2 / n) + 5e-3)


@pytest.mark.parametrize("name", list(SDES))
def test_perturbation_kernel_samples(name):
    """x_t = mean + std z over many z has the kernel's mean and variance for any data shape."""
    sde = SDES[name]
    x0 = jnp.full((4000, 2, 3, 1), 0.7)
    t = jnp.linspace(0.05, 0.95, 4000)
    mean, std = sde.marginal_prob(x0, t)
    assert mean.shape == x0.shape and std.shape == (4000,)
    z = jax.random.normal(jax.random.PRNGKey(2), x0.shape)
    xt = mean + sde_lib.batch_broadcast(std, x0) * z
    resid = (xt - mean) / sde_lib.batch_broadcast(std, x0)
    assert abs(float(resid.mean())) < 5 / np.sqrt(resid.size)
    assert abs(float(resid.var()) - 1.0) < 5 * np.sqrt(2 / resid.size)


@pytest.mark.parametrize("name", list(SDES))
def test_jit_static_vmap_and_shapes(name):
    sde = SDES[name]
    assert hash(sde) == hash(type(sde)(*dataclass_values(sde)))
    f = jax.jit(lambda s, x, t: s.sde(x, t), static_argnums=0)
    x = jnp.ones((3, 4, 4, 2))
    drift, g = f(sde, x, jnp.array([0.1, 0.5, 0.9]))
    assert drift.shape == x.shape and g.shape == (3,)
    per_example = jax.vmap(lambda xi, ti: sde.marginal_prob(xi[None], ti[None])[1][0])
    np.testing.assert_allclose(per_example(x, jnp.array([0.1, 0.5, 0.9])),
                               sde.marginal_prob(x, jnp.array([0.1, 0.5, 0.9]))[1], rtol=1e-6)
    # A scalar t broadcasts over the batch.
    batched = sde.marginal_prob(x, jnp.full((3,), 0.5))[1][0]
    np.testing.assert_allclose(sde.marginal_prob(x, 0.5)[1], jnp.full((3,), batched))


def dataclass_values(sde):
    import dataclasses
    return [getattr(sde, f.name) for f in dataclasses.fields(sde)]


def test_langevin_alpha_for_every_sde():
    t = jnp.array([0.0, 0.5, 1.0])
    np.testing.assert_array_equal(SDES["ve"].langevin_alpha(t), jnp.ones(3))
    idx = np.array([0, 499, 999])
    np.testing.assert_allclose(SDES["vp"].langevin_alpha(t), SDES["vp"].alphas[idx])
    np.testing.assert_allclose(SDES["subvp"].langevin_alpha(t), 1 - np.linspace(1e-4, 0.02, 1000)[idx],
                               rtol=1e-6)


def test_reverse_probability_flow_halves_the_score_term():
    sde = SDES["vp"]
    x, t = jnp.ones((2, 3)), jnp.array([0.3, 0.6])
    f, g = sde.sde(x, t)
    rev_f, rev_g = sde.reverse(_test_score).sde(x, t)
    pf_f, pf_g = sde.reverse(_test_score, probability_flow=True).sde(x, t)
    np.testing.assert_allclose(rev_f - f, 2 * (pf_f - f), rtol=1e-6)
    np.testing.assert_allclose(rev_g, g)
    np.testing.assert_array_equal(pf_g, jnp.zeros(2))


@pytest.mark.parametrize("make, match", [
    (lambda: sde_lib.VESDE(sigma_min=-0.1), "sigma"),
    (lambda: sde_lib.VESDE(sigma_min=5.0, sigma_max=1.0), "sigma_min < sigma_max"),
    (lambda: sde_lib.VPSDE(beta_min=-1.0), "beta"),
    (lambda: sde_lib.SubVPSDE(beta_min=2.0, beta_max=1.0), "beta_min <= beta_max"),
    (lambda: sde_lib.VPSDE(N=0), "N"),
    (lambda: sde_lib.VPSDE(N=2.5), "N"),
    (lambda: sde_lib.get_sde("vesd"), "vesde"),
])
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_mismatched_shapes_raise_before_compilation():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="t must have shape"):
        jax.jit(sde.sde)(jnp.ones((3, 2)), jnp.ones((4,)))
    with pytest.raises(ValueError, match="score_fn must return"):
        sde.reverse(lambda x, t: x[:, :1]).sde(jnp.ones((3, 2)), jnp.ones((3,)))


@pytest.mark.parametrize("name", list(SDES))
def test_marginal_std_is_accurate_at_small_t_in_float32(name, ref):
    """Elementwise relative accuracy against the official formula run in float64 (x64/ keys), where
    1 - exp(.) cancels at t = 1e-5."""
    _, std = _per_t(jax.jit(SDES[name].marginal_prob), ref)
    np.testing.assert_allclose(std, ref[f"x64/{name}/std"], rtol=2e-6)

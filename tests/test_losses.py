"""Score-matching losses against their analytic values at the optimum.

Data x0 ~ N(m, diag(s^2)) in D = 3 dimensions. Every perturbed marginal is Gaussian,
N(a m, a^2 s^2 + std^2), so the optimal network is known in closed form; `OptimalNet` outputs it
exactly (plus `theta * tanh(x)`) from the labels alone, written here independently of the code under
test. With u = (x0 - m) / s and x_t = a x0 + std z, per dimension
    E[(std * score* + z)^2] = a^2 s^2 / (a^2 s^2 + std^2),
and Tweedie's formula E[z | x_t] = -std score*(x_t) makes d loss / d theta vanish at theta = 0.
Continuous losses average this over t ~ U(eps, 1) (computed by quadrature), discrete ones over the
N noise levels. The Monte-Carlo check uses the standard error of K independent batch losses.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from score_jax import losses
from score_jax import sde as sde_lib

MEAN = np.array([0.5, -1.0, 2.0])
STD = np.array([0.7, 1.2, 0.4])
D = MEAN.size
B0, B1, SMIN, SMAX, N = 0.1, 20.0, 0.01, 50.0, 1000
K, BATCH = 64, 8192


# ---------------------------------------------------------------- closed forms (float64, numpy)

def vp_coeffs(t, sub):
    """Mean scale a(t), std(t) and g(t)^2 of VP / sub-VP with the linear beta schedule."""
    lmc = -0.25 * t ** 2 * (B1 - B0) - 0.5 * t * B0
    var = -np.expm1(2 * lmc)
    beta = B0 + t * (B1 - B0)
    if sub:
        return np.exp(lmc), var, beta * -np.expm1(-2 * B0 * t - (B1 - B0) * t ** 2)
    return np.exp(lmc), np.sqrt(var), beta


def ve_coeffs(t):
    sigma = SMIN * (SMAX / SMIN) ** t
    return 1.0, sigma, sigma ** 2 * 2 * math.log(SMAX / SMIN)


def ddpm_tables():
    abar = np.cumprod(1 - np.linspace(B0 / N, B1 / N, N))
    return np.sqrt(abar), np.sqrt(1 - abar)


def smld_sigmas_descending():
    return np.exp(np.linspace(math.log(SMAX), math.log(SMIN), N))


def per_example(a, std, reduce_mean):
    """Expected reduced loss of one example at the optimum, for scalar a and std."""
    e = a ** 2 * STD ** 2 / (a ** 2 * STD ** 2 + std ** 2)
    return e.mean() if reduce_mean else 0.5 * e.sum()


def expected_continuous(kind, reduce_mean, weighting, eps):
    def f(t):
        a, std, g2 = ve_coeffs(t) if kind == "ve" else vp_coeffs(t, kind == "subvp")
        return per_example(a, std, reduce_mean) * (g2 / std ** 2 if weighting else 1.0)
    val, _ = integrate.quad(f, eps, 1.0, limit=400, points=[1e-3, 1e-2, 0.1], epsabs=0,
                            epsrel=1e-8)
    return val / (1.0 - eps)


def expected_discrete(kind, reduce_mean):
    if kind == "smld":
        return np.mean([per_example(1.0, s, reduce_mean) for s in smld_sigmas_descending()])
    a, std = ddpm_tables()
    return np.mean([per_example(ai, si, reduce_mean) for ai, si in zip(a, std)])


# ---------------------------------------------------------------- the optimal network

class OptimalNet(nn.Module):
    """Exact optimum of each loss from its labels, plus theta * tanh(x)."""

    kind: str  # 've', 'vp', 'subvp' (continuous labels), 'smld', 'ddpm' (integer labels)

    @nn.compact
    def __call__(self, x, labels, train=False):
        theta = self.param("theta", nn.initializers.zeros, ())
        if self.kind in ("vp", "subvp"):
            t = labels / 999.0
            lmc = -0.25 * t ** 2 * (B1 - B0) - 0.5 * t * B0
            var = -jnp.expm1(2 * lmc)
            a, std, noise_pred = jnp.exp(lmc), (var if self.kind == "subvp" else jnp.sqrt(var)), True
        elif self.kind == "ve":
            a, std, noise_pred = jnp.ones_like(labels), labels, False
        elif self.kind == "ddpm":
            tables = ddpm_tables()
            a = jnp.asarray(tables[0], jnp.float32)[labels]
            std = jnp.asarray(tables[1], jnp.float32)[labels]
            noise_pred = True
        else:
            std = jnp.asarray(smld_sigmas_descending(), jnp.float32)[labels]
            a, noise_pred = jnp.ones_like(std), False
        a, std = a[:, None], std[:, None]
        m, s = jnp.asarray(MEAN, jnp.float32)[None], jnp.asarray(STD, jnp.float32)[None]
        score = -(x - a * m) / (a ** 2 * s ** 2 + std ** 2)
        out = -std * score if noise_pred else score
        return out + theta * jnp.tanh(x)


def make_sde(kind):
    if kind in ("ve", "smld"):
        return sde_lib.VESDE(SMIN, SMAX, N)
    if kind == "subvp":
        return sde_lib.SubVPSDE(B0, B1, N)
    return sde_lib.VPSDE(B0, B1, N)


def mc_loss_and_grad(loss_fns, theta, seed):
    """K independent batch losses and d loss / d theta of each loss in `loss_fns`, each [K].

    All losses see the same keys, so XLA computes the shared random draws once (one compilation
    per SDE keeps the test fast on a small CPU).
    """
    params = {"theta": jnp.asarray(theta, jnp.float32)}

    def one(key):
        k_data, k_loss = jax.random.split(key)
        x = (jnp.asarray(MEAN, jnp.float32)[None]
             + jnp.asarray(STD, jnp.float32)[None] * jax.random.normal(k_data, (BATCH, D)))
        out = {}
        for name, loss_fn in loss_fns.items():
            (loss, _), grad = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)(
                k_loss, params, {}, x)
            out[name] = (loss, grad["theta"])
        return out

    return jax.vmap(one)(jax.random.split(jax.random.PRNGKey(seed), K))


def check_optimum(cases, seed):
    """cases: {name: (loss_fn, expected loss at the optimum)}."""
    run = jax.jit(lambda theta: mc_loss_and_grad({n: c[0] for n, c in cases.items()}, theta, seed))
    at_opt, off_opt = run(0.0), run(0.5)
    for name, (_, expected) in cases.items():
        loss, grad = (np.asarray(v, np.float64) for v in at_opt[name])
        se_loss, se_grad = loss.std(ddof=1) / math.sqrt(K), grad.std(ddof=1) / math.sqrt(K)
        assert abs(loss.mean() - expected) < 4 * se_loss + 1e-4 * expected, \
            (name, loss.mean(), expected, se_loss)
        assert abs(grad.mean()) < 4 * se_grad + 1e-6, (name, grad.mean(), se_grad)
        # Off the optimum the loss grows and its gradient points back towards theta = 0.
        loss_off, grad_off = (np.asarray(v, np.float64) for v in off_opt[name])
        se_off = loss_off.std(ddof=1) / math.sqrt(K)
        assert loss_off.mean() > expected + 4 * se_loss + 4 * se_off, (name, loss_off.mean())
        assert grad_off.mean() > 4 * grad_off.std(ddof=1) / math.sqrt(K), (name, grad_off.mean())


@pytest.mark.parametrize("kind", ["ve", "vp", "subvp"])
def test_continuous_dsm_at_optimum(kind):
    # Likelihood weighting of VP / sub-VP behaves like 1/t near 0: eps = 1e-3 keeps the
    # Monte-Carlo variance small enough for a 4-sigma check; VE keeps the official 1e-5.
    eps = 1e-5 if kind == "ve" else 1e-3
    cases = {}
    for reduce_mean in (True, False):
        for weighting in (False, True):
            loss_fn = losses.get_loss_fn(make_sde(kind), OptimalNet(kind).apply, train=True,
                                         reduce_mean=reduce_mean, continuous=True,
                                         likelihood_weighting=weighting, eps=eps)
            expected = expected_continuous(kind, reduce_mean, weighting, eps)
            cases[f"reduce_mean={reduce_mean},weighting={weighting}"] = (loss_fn, expected)
    check_optimum(cases, seed=7)


@pytest.mark.parametrize("kind", ["smld", "ddpm"])
def test_discrete_losses_at_optimum(kind):
    cases = {f"reduce_mean={reduce_mean}": (
        losses.get_loss_fn(make_sde(kind), OptimalNet(kind).apply, train=True,
                           reduce_mean=reduce_mean, continuous=False),
        expected_discrete(kind, reduce_mean)) for reduce_mean in (True, False)}
    check_optimum(cases, seed=11)


def test_discrete_dispatch_follows_official_choice():
    apply = OptimalNet("ve").apply
    assert losses._default_loss(make_sde("ve"), False) == "smld"
    assert losses._default_loss(make_sde("vp"), False) == "ddpm"
    assert losses._default_loss(make_sde("subvp"), True) == "dsm"
    assert callable(losses.get_loss_fn(make_sde("vp"), apply, train=False, continuous=True))


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("eps", [0.0, -1e-3, 1.0, 2.0])
def test_eps_outside_unit_interval_raises(eps):
    with pytest.raises(ValueError, match="eps"):
        losses.get_loss_fn(make_sde("vp"), OptimalNet("vp").apply, train=True, eps=eps)


def test_discrete_subvp_raises():
    with pytest.raises(ValueError, match="continuous"):
        losses.get_loss_fn(make_sde("subvp"), OptimalNet("vp").apply, train=True, continuous=False)


@pytest.mark.parametrize("kind", ["smld", "ddpm"])
def test_likelihood_weighting_with_discrete_loss_raises(kind):
    with pytest.raises(ValueError, match="likelihood_weighting"):
        losses.get_loss_fn(make_sde(kind), OptimalNet(kind).apply, train=True, continuous=False,
                           likelihood_weighting=True)


def test_unknown_or_mismatched_loss_name_raises():
    with pytest.raises(ValueError, match="loss.*'dsm', 'smld', 'ddpm'"):
        losses.get_loss_fn(make_sde("vp"), OptimalNet("vp").apply, train=True, loss="sliced")
    with pytest.raises(ValueError, match="loss: 'smld' needs a VESDE"):
        losses.get_loss_fn(make_sde("vp"), OptimalNet("vp").apply, train=True, loss="smld")
    with pytest.raises(ValueError, match="loss: 'ddpm' needs a VPSDE"):
        losses.get_loss_fn(make_sde("subvp"), OptimalNet("vp").apply, train=True, loss="ddpm")


@pytest.mark.parametrize("kind", ["vp", "smld", "ddpm"])
def test_batch_shape_mismatch_raises_before_compilation(kind):
    loss_fn = losses.get_loss_fn(make_sde(kind), OptimalNet(kind).apply, train=True,
                                 continuous=kind == "vp", data_shape=(D,))
    params = {"theta": jnp.zeros(())}
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match=r"x: batch of shape \(4, 5\)"):
        jax.jit(loss_fn).trace(key, params, {}, jnp.zeros((4, 5)))
    with pytest.raises(ValueError, match="x: expected floating-point"):
        jax.jit(loss_fn).trace(key, params, {}, jnp.zeros((4, D), jnp.int32))
    jax.jit(loss_fn).trace(key, params, {}, jnp.zeros((4, D)))  # the right shape traces

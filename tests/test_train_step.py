"""Optimiser, EMA and train-step factory: closed forms, replayed recursions and invariants."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from score_jax import losses, optim
from score_jax import sde as sde_lib
from score_jax import train_state as ts
import gmm


class MLP(nn.Module):
    """Noise-prediction MLP for 2-D data, conditioned on t = labels / 999 (VP convention)."""

    width: int = 64
    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, labels, train=False):
        t = (labels / 999.0).astype(x.dtype)[:, None]
        h = jnp.concatenate([x, t, jnp.sin(6 * t), jnp.cos(6 * t)], axis=1)
        for _ in range(2):
            h = nn.Dense(self.width)(h)
            if self.batch_norm:
                h = nn.BatchNorm(use_running_average=not train)(h)
            h = nn.swish(h)
        return nn.Dense(x.shape[1])(h)


class OracleNet(nn.Module):
    """Exact noise prediction -std(t) * score_t(x) of the Gaussian mixture (tests/gmm.py)."""

    @nn.compact
    def __call__(self, x, labels, train=False):
        sde, t = sde_lib.VPSDE(), labels / 999.0
        std = sde.marginal_prob(x, t)[1]
        return -std[:, None] * gmm.two_d_mixture().score(sde, x, t)


SDE = sde_lib.VPSDE()
MIXTURE = gmm.two_d_mixture()


def batches(n, batch=128, seed=0):
    """n batches [n, batch, 2] of mixture samples."""
    x, _ = MIXTURE.sample(np.random.default_rng(seed), n * batch)
    return jnp.asarray(x.reshape(n, batch, 2))


# Shared configurations, so each compiled step is built once for the whole module.
STOP = dict(warmup=2, ema_warmup=True, nan_policy="stop")
SKIP = dict(nan_policy="skip", batch_norm=True)


@functools.lru_cache(maxsize=None)
def setup(*, lr=2e-3, warmup=0, grad_clip=1.0, ema_rate=0.99, ema_warmup=False,
          nan_policy="stop", batch_norm=False):
    """(model, step, jitted step, initial state) for one configuration."""
    model = MLP(batch_norm=batch_norm)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    optimizer = optim.get_optimizer("Adam", lr=lr, warmup=warmup, grad_clip=grad_clip)
    loss_fn = losses.get_loss_fn(SDE, model.apply, train=True, reduce_mean=True, continuous=True,
                                 data_shape=(2,))
    step = ts.make_train_step(loss_fn, optimizer, ema_rate=ema_rate, ema_warmup=ema_warmup,
                              nan_policy=nan_policy)
    state = ts.init_train_state(jax.random.PRNGKey(1), params, optimizer, model_state=model_state)
    return model, step, jax.jit(step), state


@functools.lru_cache(maxsize=None)
def multi_step(n, **config):
    return jax.jit(ts.make_multi_step(setup(**config)[1], n))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol,
                                                         atol=atol), a, b)


def assert_trees_equal(a, b):
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), a, b)


# ---------------------------------------------------------------- optimiser and EMA closed forms

def flax_adam_reference(params, grads, *, lr, beta1, beta2, eps, weight_decay, warmup, grad_clip):
    """flax.optim.Adam + the official optimization_manager, in float64 numpy; params after each step."""
    p, m, v, out = params.astype(np.float64), 0.0, 0.0, []
    for k, g in enumerate(grads):
        g = g.astype(np.float64)
        if grad_clip >= 0:
            g = g * grad_clip / max(np.sqrt(np.sum(g ** 2)), grad_clip)
        lr_k = lr * min(k / warmup, 1.0) if warmup > 0 else lr
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g ** 2
        m_hat, v_hat = m / (1 - beta1 ** (k + 1)), v / (1 - beta2 ** (k + 1))
        p = p - lr_k * m_hat / (np.sqrt(v_hat) + eps) - lr_k * weight_decay * p
        out.append(p)
    return out


@pytest.mark.parametrize("hyper", [
    dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, warmup=0, grad_clip=-1.0),
    dict(lr=3e-2, beta1=0.8, beta2=0.99, eps=1e-3, weight_decay=0.1, warmup=4, grad_clip=1.0),
])
def test_optimizer_matches_flax_adam_with_warmup_and_clipping(hyper):
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(7).astype(np.float32)
    # Scales straddle the clip norm, so some steps are clipped and others are not.
    grads = [(s * rng.standard_normal(7)).astype(np.float32) for s in (0.05, 3.0, 0.2, 10.0, 0.3,
                                                                      1.5, 0.01, 4.0)]
    optimizer = optim.get_optimizer("Adam", **hyper)
    params, state = {"w": jnp.asarray(p0)}, optimizer.init({"w": jnp.asarray(p0)})
    update = jax.jit(optimizer.update)
    expected = flax_adam_reference(p0, grads, **hyper)
    for k, g in enumerate(grads):
        updates, state = update({"w": jnp.asarray(g)}, state, params)
        params = jax.tree.map(lambda a, b: a + b, params, updates)
        np.testing.assert_allclose(params["w"], expected[k], rtol=2e-5, atol=2e-6)
        lr_k = hyper["lr"] * (min(k / hyper["warmup"], 1.0) if hyper["warmup"] else 1.0)
        np.testing.assert_allclose(float(optim.current_learning_rate(state)), lr_k, rtol=1e-6)


def test_clip_by_global_norm_closed_form():
    clip = optim.clip_by_global_norm(2.0)
    big = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[12.0]])}          # norm 13
    small = {"a": jnp.array([0.3, 0.4]), "b": jnp.array([[1.2]])}         # norm 1.3
    out_big, _ = clip.update(big, clip.init(big))
    out_small, _ = clip.update(small, clip.init(small))
    assert_trees_close(out_big, {"a": jnp.array([6 / 13, 8 / 13]), "b": jnp.array([[24 / 13]])})
    assert_trees_equal(out_small, small)


def test_warmup_schedule_starts_at_zero_like_the_official_code():
    schedule = optim.warmup_schedule(1e-3, 4)
    np.testing.assert_allclose([float(schedule(jnp.asarray(k))) for k in range(6)],
                               [0.0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3], rtol=1e-6)


def test_ema_rate_and_update():
    steps = np.arange(0, 400, 37)
    np.testing.assert_allclose([float(optim.ema_rate(s, 0.999, warmup=True)) for s in steps],
                               np.minimum(0.999, (1 + steps) / (10 + steps)), rtol=1e-6)
    assert float(optim.ema_rate(5, 0.999)) == pytest.approx(0.999)
    out = optim.ema_update({"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -2.0])},
                           jnp.asarray(0.75))
    np.testing.assert_allclose(out["w"], [1.5, 1.0])


# ---------------------------------------------------------------- the train step

@functools.lru_cache(maxsize=None)
def _dsm_eval(module):
    """Jitted eval-mode DSM loss of `module` on one fixed key and a fixed large batch."""
    loss_fn = losses.get_loss_fn(SDE, module.apply, train=False, reduce_mean=True, continuous=True)
    x = batches(1, 16384, seed=99)[0]
    return jax.jit(lambda params: loss_fn(jax.random.PRNGKey(5), params, {}, x)[0])


def test_training_reduces_loss_and_ema_follows_recursion():
    n_steps, rate = 300, 0.99
    model, _, step, state = setup(**STOP)
    xs = batches(n_steps)
    initial = float(_dsm_eval(model)(state.params))
    params_hist, ema0 = [], jax.tree.map(np.asarray, state.params_ema)
    for k in range(n_steps):
        state, metrics = step(state, xs[k])
        assert bool(metrics["finite"])
        params_hist.append(jax.tree.map(np.asarray, state.params))
    final, oracle = float(_dsm_eval(model)(state.params)), float(_dsm_eval(OracleNet())({}))
    # The loss falls most of the way from its value at initialisation to the exact optimum.
    assert oracle < final < initial
    assert final - oracle < 0.35 * (initial - oracle), (initial, final, oracle)
    assert int(state.step) == n_steps
    # Replay ema_{k+1} = r_k ema_k + (1 - r_k) params_{k+1} in float64.
    ema = jax.tree.map(lambda e: e.astype(np.float64), ema0)
    for k, p in enumerate(params_hist):
        r = min(rate, (1 + k) / (10 + k))
        ema = jax.tree.map(lambda e, q: r * e + (1 - r) * q, ema, p)
    assert_trees_close(state.params_ema, ema, rtol=1e-4, atol=1e-6)


def test_multi_step_scan_equals_single_steps():
    _, _, single, state0 = setup(**STOP)
    xs = batches(4)
    state, single_metrics = state0, []
    for k in range(4):
        state, metrics = single(state, xs[k])
        single_metrics.append(metrics)
    multi_state, multi_metrics = multi_step(4, **STOP)(state0, xs)
    assert_trees_close(multi_state, state)
    for name in ("loss", "grad_norm", "lr"):
        np.testing.assert_allclose(multi_metrics[name], [m[name] for m in single_metrics],
                                   rtol=1e-5, atol=1e-7)
    # Warm-up over 2 updates from lr 0, as the official optimization_manager.
    np.testing.assert_allclose(multi_metrics["lr"], [0.0, 1e-3, 2e-3, 2e-3], rtol=1e-6)


def test_resumed_run_reproduces_uninterrupted_run():
    _, _, step, state0 = setup(**STOP)
    xs = batches(6)
    straight = state0
    for k in range(6):
        straight, _ = step(straight, xs[k])
    resumed = state0
    for k in range(3):
        resumed, _ = step(resumed, xs[k])
    # A host round trip stands in for a checkpoint save and restore.
    resumed = jax.tree.map(jnp.asarray, jax.device_get(resumed))
    for k in range(3, 6):
        resumed, _ = step(resumed, xs[k])
    assert_trees_equal(resumed, straight)


def _nan_batch(x):
    return x.at[0, 0].set(jnp.nan)


def test_nan_policy_skip_keeps_params_and_advances_step():
    _, _, step, state = setup(**SKIP)
    xs = batches(2)
    state, _ = step(state, xs[0])
    skipped, metrics = step(state, _nan_batch(xs[1]))
    assert not bool(metrics["finite"])
    assert int(skipped.step) == int(state.step) + 1
    assert_trees_equal((skipped.params, skipped.opt_state, skipped.params_ema,
                        skipped.model_state), (state.params, state.opt_state, state.params_ema,
                                               state.model_state))
    resumed, metrics = step(skipped, xs[1])
    assert bool(metrics["finite"])
    assert not np.array_equal(resumed.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])
    assert not np.array_equal(resumed.model_state["batch_stats"]["BatchNorm_0"]["mean"],
                              state.model_state["batch_stats"]["BatchNorm_0"]["mean"])


def test_nan_policy_stop_returns_input_state():
    _, _, step, state = setup(**STOP)
    xs = batches(4)
    stopped, metrics = step(state, _nan_batch(xs[0]))
    assert not bool(metrics["finite"])
    assert not np.isfinite(float(metrics["loss"]))
    assert_trees_equal(stopped, state)
    # Inside a scan the state freezes at the first bad step, and later steps report finite=False.
    bad = jnp.stack([xs[0], _nan_batch(xs[1]), xs[2], xs[3]])
    multi_state, multi_metrics = multi_step(4, **STOP)(state, bad)
    np.testing.assert_array_equal(multi_metrics["finite"], [True, False, False, False])
    one_good, _ = step(state, xs[0])
    assert_trees_close(multi_state, one_good)


def test_multi_step_skip_policy_continues_after_bad_batch():
    _, _, step, state = setup(**SKIP)
    xs = batches(4)
    bad = jnp.stack([xs[0], _nan_batch(xs[1]), xs[2], xs[3]])
    multi_state, metrics = multi_step(4, **SKIP)(state, bad)
    np.testing.assert_array_equal(metrics["finite"], [True, False, True, True])
    expected = state
    for x in bad:
        expected, _ = step(expected, x)
    assert_trees_close(multi_state, expected)
    assert int(multi_state.step) == 4


def test_eval_step_uses_ema_params_without_updating():
    model, _, step, state = setup(**STOP)
    state, _ = step(state, batches(1)[0])
    eval_loss_fn = losses.get_loss_fn(SDE, model.apply, train=False, reduce_mean=True)
    eval_step = jax.jit(ts.make_eval_step(eval_loss_fn))
    x = batches(1, seed=4)[0]
    halved = jax.tree.map(lambda p: 0.5 * p, state.params)
    loss = float(eval_step(state.replace(params_ema=halved), x)["loss"])
    # Only params_ema matter: replacing params changes nothing, replacing params_ema does.
    assert float(eval_step(state.replace(params_ema=halved, params=state.params_ema), x)["loss"]) \
        == loss
    assert float(eval_step(state, x)["loss"]) != pytest.approx(loss, rel=1e-3)


def test_default_n_jitted_steps():
    assert ts.default_n_jitted_steps("cpu") == 1
    assert ts.default_n_jitted_steps("gpu") == 5
    assert ts.default_n_jitted_steps("tpu") == 5
    assert ts.default_n_jitted_steps() == (1 if jax.default_backend() == "cpu" else 5)


# ---------------------------------------------------------------- bad input

def test_unknown_optimizer_raises_with_valid_names():
    with pytest.raises(ValueError, match=r"optim.optimizer.*'Adam'"):
        optim.get_optimizer("SGD", lr=1e-3)
    with pytest.raises(ValueError, match="optim.grad_clip"):
        optim.get_optimizer("Adam", lr=1e-3, grad_clip=0.0)
    with pytest.raises(ValueError, match="optim.beta1"):
        optim.get_optimizer("Adam", lr=1e-3, beta1=1.0)


def test_bad_step_arguments_raise():
    model = setup(**STOP)[0]
    loss_fn = losses.get_loss_fn(SDE, model.apply, train=True)
    optimizer = optim.get_optimizer(lr=1e-3)
    with pytest.raises(ValueError, match="nan_policy"):
        ts.make_train_step(loss_fn, optimizer, ema_rate=0.999, nan_policy="ignore")
    with pytest.raises(ValueError, match="ema_rate"):
        ts.make_train_step(loss_fn, optimizer, ema_rate=1.5)
    with pytest.raises(ValueError, match="n_jitted_steps"):
        ts.make_multi_step(ts.make_train_step(loss_fn, optimizer, ema_rate=0.9), 0)


def test_batch_shape_mismatch_raises_before_compilation():
    _, step, _, state = setup(**STOP)
    with pytest.raises(ValueError, match=r"x: batch of shape \(8, 3\)"):
        jax.jit(step).trace(state, jnp.zeros((8, 3)))
    with pytest.raises(ValueError, match="n_jitted_steps=2"):
        jax.jit(ts.make_multi_step(step, 2)).trace(state, jnp.zeros((3, 8, 2)))
    with pytest.raises(ValueError, match=r"x: batch of shape \(8, 3\)"):
        jax.jit(ts.make_multi_step(step, 2)).trace(state, jnp.zeros((2, 8, 3)))


@pytest.mark.parametrize("nan_policy", ["stop", "skip"])
def test_in_place_update_equals_the_plain_optax_update(nan_policy):
    # The same optimiser as a plain optax transformation takes the generic path of TrainStep
    # (optax update, apply_updates, ema_update, then where(finite, new, old)).
    hyper = dict(lr=3e-2, beta1=0.8, beta2=0.99, eps=1e-3, weight_decay=0.1, warmup=2,
                 grad_clip=1.0)
    fused = optim.get_optimizer("Adam", **hyper)
    plain = optax.GradientTransformation(fused.init, fused.update)
    model = MLP()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    loss_fn = losses.get_loss_fn(SDE, model.apply, train=True, reduce_mean=True, continuous=True)
    steps = [jax.jit(ts.make_train_step(loss_fn, opt, ema_rate=0.9, nan_policy=nan_policy))
             for opt in (fused, plain)]
    states = [ts.init_train_state(jax.random.PRNGKey(1), jax.tree.map(jnp.copy, params), opt)
              for opt in (fused, plain)]
    xs = batches(6)
    for k in range(6):
        x = _nan_batch(xs[k]) if k == 3 else xs[k]
        (a, ma), (b, mb) = [step(state, x) for step, state in zip(steps, states)]
        assert bool(ma["finite"]) == bool(mb["finite"]) == (k != 3)
        np.testing.assert_allclose(float(ma["lr"]), float(mb["lr"]), rtol=1e-7)
        # Equal up to float32 rounding: XLA fuses the two orders differently.
        assert_trees_close(a, b, rtol=1e-5, atol=1e-7)
        if k == 3:
            assert_trees_equal((a.params, a.opt_state, a.params_ema),
                               (states[0].params, states[0].opt_state, states[0].params_ema))
        states = [a, b]


def test_in_place_update_copies_no_state_on_the_cpu():
    model = MLP()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    loss_fn = losses.get_loss_fn(SDE, model.apply, train=True, reduce_mean=True, continuous=True)
    fused = optim.get_optimizer("Adam", lr=1e-3, warmup=5, grad_clip=1.0)
    plain = optax.GradientTransformation(fused.init, fused.update)

    def state_copies(opt):
        step = ts.make_train_step(loss_fn, opt, ema_rate=0.99)
        state = ts.init_train_state(jax.random.PRNGKey(1), params, opt)
        text = jax.jit(step, donate_argnums=0).lower(state, batches(1)[0]).compile().as_text()
        entry = text[text.index("ENTRY"):]
        # Copies of parameter-sized leaves (the integer counts are scalars).
        return sum(" copy(%state_" in line and "= f32[" in line for line in entry.splitlines())

    if jax.default_backend() == "cpu":
        assert state_copies(fused) == 0
        assert state_copies(plain) > 0  # what the reordering removes

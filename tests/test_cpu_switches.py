"""The off switches of score_jax.models.cpu: with its variable at "0" each workaround is flax's layer
or the plain formula (checked on the traced program: no products, no loop, jax.random's hash) with
the same values; SCORE_JAX_CPU_WORKAROUNDS=0 turns all off; on the CPU each is on by default."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.models import cpu
from score_jax.models.cpu import switches

ON_CPU = jax.default_backend() == "cpu"
SHAPE = (2, 16, 16, 8)  # 256 positions: the products' threshold, so every workaround applies


@pytest.fixture
def set_env(monkeypatch):
    """set_env(var, value): set an environment variable and make the switches read it again."""
    def set_(var, value):
        monkeypatch.setenv(var, value)
        switches.enabled.cache_clear()
    yield set_
    monkeypatch.undo()
    switches.enabled.cache_clear()


def _program(f, *args) -> str:
    # A new function each time: make_jaxpr caches traces by function, and the switches act at trace time.
    return str(jax.make_jaxpr(lambda *a: f(*a))(*args))


def _x(seed=0, shape=SHAPE):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _bias_grad(y, b):
    return jax.grad(lambda b: jnp.sum(jnp.sin(cpu.add_bias(y, b))))(b)


def _conv(module, x):
    variables = module.init(jax.random.PRNGKey(1), x)
    return module.apply(variables, x), jax.grad(lambda v: jnp.sum(jnp.sin(module.apply(v, x))))(variables)


def _norm_grad(module, x):
    variables = module.init(jax.random.PRNGKey(1), x)
    return jax.grad(lambda v, x: jnp.sum(jnp.sin(module.apply(v, x))), (0, 1))(variables, x)


def _barrier_grad(x):
    return jax.grad(lambda x: jnp.sum(jnp.sin(cpu.grad_barrier(jnp.tanh(x)))))(x)


def _dropout(x, key):
    return cpu.Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key})


# name -> (a function of x whose traced program shows the workaround, the sign of it when on).
PROBES = {
    "bias_sums": (lambda x: _bias_grad(x, x[0, 0, 0]), "dot_general"),
    "group_norm": (lambda x: _norm_grad(cpu.GroupNorm(num_groups=4), x), "dot_general"),
    "grad_barrier": (_barrier_grad, "while["),
    "dropout": (lambda x: _dropout(x, jax.random.PRNGKey(3)), "while["),
}


def test_every_switch_is_probed_and_unknown_names_raise():
    assert set(PROBES) == set(switches.SWITCHES)
    with pytest.raises(ValueError, match="unknown CPU workaround"):
        switches.enabled("group_nrom")


@pytest.mark.parametrize("name", sorted(switches.SWITCHES))
def test_off_switch_removes_the_workaround(name, set_env):
    probe, sign = PROBES[name]
    if ON_CPU:
        assert sign in _program(probe, _x())
    set_env(switches.SWITCHES[name], "0")
    assert not switches.enabled(name)
    assert sign not in _program(probe, _x())
    assert all(switches.enabled(n) for n in switches.SWITCHES if n != name)


def test_all_off(set_env):
    set_env(switches.ALL, "0")
    assert not any(switches.enabled(n) for n in switches.SWITCHES)
    for probe, sign in PROBES.values():
        assert sign not in _program(probe, _x())


def test_off_gives_flax_layers_and_plain_formulas(set_env):
    """Off, each surface name is flax's layer or the formula; the values on and off agree."""
    x, key = _x(), jax.random.PRNGKey(5)
    b = jax.random.normal(key, SHAPE[-1:])
    conv_args = dict(features=5, kernel_size=(3, 3), bias_init=nn.initializers.normal(1.0))
    on = (_bias_grad(x, b), _conv(cpu.Conv(**conv_args), x), _norm_grad(cpu.GroupNorm(num_groups=4), x),
          _barrier_grad(x), _dropout(x, key))
    set_env(switches.ALL, "0")
    off = (_bias_grad(x, b), _conv(cpu.Conv(**conv_args), x), _norm_grad(cpu.GroupNorm(num_groups=4), x),
           _barrier_grad(x), _dropout(x, key))
    # Off is flax's code exactly: the same program, bit for bit.
    np.testing.assert_array_equal(off[0], jax.grad(lambda b: jnp.sum(jnp.sin(x + b[None, None, None, :])))(b))
    jax.tree_util.tree_map(np.testing.assert_array_equal, off[1], _conv(nn.Conv(**conv_args), x))
    jax.tree_util.tree_map(np.testing.assert_array_equal, off[2], _norm_grad(nn.GroupNorm(num_groups=4), x))
    np.testing.assert_array_equal(off[3], jax.grad(lambda x: jnp.sum(jnp.sin(jnp.tanh(x))))(x))
    flax_dropout = nn.Dropout(0.3).apply({}, x, deterministic=False, rngs={"dropout": key})
    np.testing.assert_array_equal(off[4], flax_dropout)
    np.testing.assert_array_equal(on[4], flax_dropout)  # the masks do not depend on the switch
    # On, the same values to float32 rounding.
    jax.tree_util.tree_map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4), on[:4], off[:4])

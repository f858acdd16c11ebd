"""score_jax's XLA:CPU defaults: added to XLA_FLAGS unless the user set them, and in effect."""

import jax
import jax.numpy as jnp

from score_jax import xla_cpu


def test_defaults_are_added_after_the_users_flags():
    flags = xla_cpu.with_defaults("--xla_force_host_platform_device_count=8",
                                  defaults=(("xla_a", ""), ("xla_b", "1")))
    assert flags == "--xla_force_host_platform_device_count=8 --xla_a= --xla_b=1"
    assert xla_cpu.with_defaults("", defaults=(("xla_a", "x"),)) == "--xla_a=x"


def test_a_flag_the_user_set_is_left_as_it_is():
    user = "--xla_a=dot,eltwise  --xla_c=2"
    assert xla_cpu.with_defaults(user, defaults=(("xla_a", ""), ("xla_b", "1"))) == user + " --xla_b=1"
    assert xla_cpu.with_defaults("xla_a=1", defaults=(("xla_a", ""),)) == "xla_a=1"


def test_configure_writes_the_environment_and_can_be_turned_off():
    env = {"XLA_FLAGS": "--xla_c=2"}
    xla_cpu.configure(env)
    assert env["XLA_FLAGS"] == xla_cpu.with_defaults("--xla_c=2")
    assert env["XLA_FLAGS"] != "--xla_c=2"
    xla_cpu.configure(env)  # idempotent
    assert env["XLA_FLAGS"] == xla_cpu.with_defaults("--xla_c=2")
    off = {"SCORE_JAX_XLA_DEFAULTS": "0"}
    xla_cpu.configure(off)
    assert "XLA_FLAGS" not in off


def test_convolutions_do_not_go_to_ynnpack():
    """conftest configured the backend as main.py does: XLA's own convolution is compiled."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    hlo = conv.lower(x, w).compile().as_text()
    assert "convolution" in hlo
    assert "ynn_fusion" not in hlo

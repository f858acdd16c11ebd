"""Host-side checks shared by every solver: the SDE, eps, shapes, data and the score_fn contract.

Called before anything is compiled, so a wrong argument is one `InvalidInputError` that names it,
never an XLA trace. Samplers, likelihood, losses and controllable generation all use these.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import sde as sde_lib
from score_jax.errors import InvalidInputError

SDE_TYPES = (sde_lib.VESDE, sde_lib.VPSDE, sde_lib.SubVPSDE)


def check_sde(sde: Any) -> None:
    """Raise unless `sde` is a VESDE, VPSDE or SubVPSDE."""
    if not isinstance(sde, SDE_TYPES):
        raise InvalidInputError(f"sde: expected a VESDE, VPSDE or SubVPSDE, got "
                                f"{type(sde).__name__}.")


def check_eps(sde: sde_lib.SDE, eps: Any, name: str = "eps") -> float:
    """`eps` as a float in (0, T), the time at which a solve stops (or starts, for likelihoods)."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) or not (
            0.0 < eps < sde.T):
        raise InvalidInputError(f"{name} must be a float in (0, T={sde.T}), the smallest diffusion "
                                f"time of the solve, got {name}={eps!r}.")
    return float(eps)


def check_shape(shape: Any) -> tuple[int, ...]:
    """`shape` as a tuple [batch, *data_shape] of positive ints with at least 2 axes."""
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise InvalidInputError(f"shape must be a tuple of ints [batch, *data_shape], got "
                                f"{shape!r}.") from None
    if len(shape) < 2 or min(shape) < 1:
        raise InvalidInputError(f"shape must be [batch, *data_shape] with positive sizes and at "
                                f"least 2 axes (use (batch, 1) for scalar data), got {shape}.")
    return shape


def check_data(x: Any, name: str = "x") -> jax.Array:
    """`x` as a floating array [batch, *data_shape] (at least 2 axes)."""
    x = jnp.asarray(x)
    check_shape(x.shape)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise InvalidInputError(f"{name} must be floating-point data [batch, ...] (dequantised and "
                                f"scaled), got shape {x.shape} dtype {x.dtype}.")
    return x


def check_positive(name: str, value: Any, integer: bool = False) -> None:
    """Raise unless `value` is a positive number (a positive int with `integer`)."""
    ok_type = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, ok_type) or not value > 0:
        kind = "a positive integer" if integer else "a positive number"
        raise InvalidInputError(f"{name} must be {kind}, got {name}={value!r}.")


def check_x_init(x_init: Any, shape: tuple[int, ...]) -> Optional[jax.Array]:
    """x_init (a starting state instead of a prior draw) as an array of `shape`, or None."""
    if x_init is None:
        return None
    x_init = jnp.asarray(x_init)
    if x_init.shape != tuple(shape):
        raise InvalidInputError(f"x_init must have shape {tuple(shape)}, got {x_init.shape}.")
    return x_init


def check_score_fn(score_fn: Callable, shape: tuple[int, ...], dtype: Any) -> None:
    """Trace score_fn(x [*shape], t [batch]) abstractly (no FLOPs); raise unless it returns [*shape]."""
    if not callable(score_fn):
        raise InvalidInputError(f"score_fn must be a callable score_fn(x, t), got "
                                f"{type(score_fn).__name__}.")
    out = jax.eval_shape(score_fn, jax.ShapeDtypeStruct(shape, dtype),
                         jax.ShapeDtypeStruct(shape[:1], dtype))
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(shape):
        got = getattr(out, "shape", type(out).__name__)
        raise InvalidInputError(f"score_fn(x, t) must return an array of the shape of x {shape} "
                                f"(t has shape {shape[:1]}), got {got}.")


def lookup(arg: str, name: Any, table: dict) -> str:
    """The key of `table` named `name` (case-insensitive); raises listing the valid names."""
    key = name.lower() if isinstance(name, str) else name
    if key not in table:
        raise InvalidInputError(f"{arg}={name!r} is unknown; valid names are {sorted(table)}.")
    return key

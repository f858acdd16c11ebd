"""An identity whose gradient XLA:CPU computes once, into a buffer of its own.

Why: XLA:CPU fuses cheap elementwise chains into every consumer and never materialises them. In a
train step the cotangent flowing down a residual network is such a chain: the skip additions, the
1/sqrt(2) rescaling and the GroupNorm / swish / dropout backward formulas of every block above,
so each consumer (the weight-gradient transposes of the convolutions, their input gradients, the
bias sums) recomputes the chain back to the last buffer, and deeper layers recompute longer chains.
`jax.lax.optimization_barrier` does not stop this: XLA:CPU removes it before fusion. A `while`
loop whose trip count XLA cannot know does: its operand is one buffer. The loop body multiplies
by a runtime 1.0 (exact: g * 1.0 == g) once, so the barrier passes every value through bit for
bit, NaN and infinity included; only the code around it is fused differently, which can change a
gradient's float32 rounding.

On GPU and TPU, where XLA's fusion heuristics differ, and with SCORE_JAX_CPU_GRAD_BARRIER=0, it is the
plain identity.

`materialize`, the one-trip loop itself, serves forward values that XLA:CPU would otherwise
recompute in each consumer too (dropout.py's masks), for any dtype.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from score_jax.models.cpu.switches import enabled

Array = jax.Array


def materialize(x: Array, source: Optional[Array] = None) -> Array:
    """x [...] unchanged (any dtype), computed once into its own buffer (a one-trip while loop XLA keeps).

    `source` is a scalar XLA cannot know when compiling, from which the loop's runtime 1 is made;
    by default x's first element. Pass a cheaper one when x is a long computation: XLA compiles a
    copy of that computation for the one element it reads.
    """
    one = _runtime_one(x.reshape(-1)[0] if source is None else jnp.asarray(source))
    trips = (one == 1).astype(jnp.int32)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return _one_trip(x, trips, lambda v: v * one.astype(x.dtype))
    zero = (one != 1).astype(x.dtype)  # a runtime zero / False for integers and booleans
    return _one_trip(x, trips, lambda v: v ^ zero if x.dtype == bool else v + zero)


def _runtime_one(seed: Array) -> Array:
    """1 - 0 * seed for a scalar seed: 1 at run time, which XLA cannot prove (it does not fold 0 * x
    for floats). A non-float seed's bits are read as a float32: XLA reasons about converted integers
    (0 * float(bool) became a select), not about bitcasts."""
    if not jnp.issubdtype(seed.dtype, jnp.inexact):
        seed = jax.lax.bitcast_convert_type(seed.astype(jnp.uint32), jnp.float32)
    return jnp.where(jnp.isfinite(seed), 1 - 0 * seed, jnp.ones_like(seed))


def _one_trip(x: Array, trips: Array, body) -> Array:
    """body(x), run `trips` (at run time 1) times in a while loop."""
    _, x = jax.lax.while_loop(lambda c: c[0] < trips, lambda c: (c[0] + 1, body(c[1])), (jnp.zeros([], jnp.int32), x))
    return x


@jax.custom_vjp
def _barrier(x: Array) -> Array:
    return x


def _barrier_fwd(x):
    return x, None


def _barrier_bwd(_, g):
    return (materialize(g),)


_barrier.defvjp(_barrier_fwd, _barrier_bwd)


def grad_barrier(x: Array) -> Array:
    """x [...] unchanged; on the CPU its cotangent is materialised once (see the module docstring)."""
    return _barrier(x) if jax.default_backend() == "cpu" and enabled("grad_barrier") else x

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

On GPU and TPU, where XLA's fusion heuristics differ, it is the plain identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _materialize(g: Array) -> Array:
    """g [...] unchanged, computed once into its own buffer (a one-trip while loop XLA keeps)."""
    first = g.reshape(-1)[0]
    # 1.0 and 1 at run time, which XLA cannot prove: it does not fold 0 * x for floats (NaN, inf).
    one = jnp.where(jnp.isfinite(first), 1 - 0 * first, jnp.ones_like(first))
    trips = (one == 1).astype(jnp.int32)
    _, g, _ = jax.lax.while_loop(lambda c: c[0] < trips, lambda c: (c[0] + 1, c[1] * c[2], c[2]),
                                 (jnp.zeros([], jnp.int32), g, one))
    return g


@jax.custom_vjp
def _barrier(x: Array) -> Array:
    return x


def _barrier_fwd(x):
    return x, None


def _barrier_bwd(_, g):
    return (_materialize(g),)


_barrier.defvjp(_barrier_fwd, _barrier_bwd)


def grad_barrier(x: Array) -> Array:
    """x [...] unchanged; on the CPU its cotangent is materialised once (see the module docstring)."""
    return _barrier(x) if jax.default_backend() == "cpu" else x

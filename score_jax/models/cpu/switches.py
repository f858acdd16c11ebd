"""The off switches of the XLA:CPU workarounds: one environment variable each, read once.

A workaround is on unless its variable, or SCORE_JAX_CPU_WORKAROUNDS (all of them), is "0". Off,
the layer is flax's own code and the formula the plain one under autodiff, as on GPU and TPU: set
one to measure a workaround against XLA's own fusion (any bench/ script, run with the variable), or
to rule it out when a CPU result looks wrong. Values do not depend on the switches beyond float32
rounding (the dropout masks not at all).

A variable is read the first time a network is traced, not at import; `enabled.cache_clear()`
makes the next trace read it again (tests do). A function jitted before that keeps what it traced.
"""

from __future__ import annotations

import functools
import os

ALL = "SCORE_JAX_CPU_WORKAROUNDS"

# Workaround name -> the environment variable that turns it off with "0".
SWITCHES: dict[str, str] = {
    "bias_sums": "SCORE_JAX_CPU_BIAS_SUMS",        # sums.add_bias / add_example_bias, conv.Conv
    "group_norm": "SCORE_JAX_CPU_GROUP_NORM",      # group_norm.GroupNorm's closed-form VJP
    "grad_barrier": "SCORE_JAX_CPU_GRAD_BARRIER",  # barrier.grad_barrier
    "dropout": "SCORE_JAX_CPU_DROPOUT",            # dropout.Dropout's unrolled hash, mask stored once
}


@functools.cache
def enabled(name: str) -> bool:
    """Whether the workaround `name` (a key of SWITCHES) is on: neither its variable nor ALL is "0".

    Raises:
      ValueError: for a name that is not in SWITCHES.
    """
    if name not in SWITCHES:
        raise ValueError(f"name: unknown CPU workaround {name!r}; expected one of {sorted(SWITCHES)}.")
    return os.environ.get(ALL, "1") != "0" and os.environ.get(SWITCHES[name], "1") != "0"

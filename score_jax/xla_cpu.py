"""score_jax's XLA:CPU settings, given to XLA through XLA_FLAGS before JAX starts its CPU backend.

jaxlib 0.10 hands convolutions, dots and many elementwise fusions on the CPU to YNNPACK by default.
On the score networks that is the slow path: measured on a 2-core AMD EPYC (AVX2), a 3x3 convolution
at 8x8x64 (batch 64) took 7.1 / 11.6 / 7.9 ms forward / weight gradient / input gradient through
YNNPACK and 3.0 / 3.8 / 4.2 ms through XLA's own (Eigen) convolution, and the digits DDPM++ train
step 250 ms against 160-175 ms (`bench/twin.py --baseline_xla_flags ""` measures both on the
machine at hand). So score_jax turns YNNPACK fusions off unless the user's XLA_FLAGS already
says how to use them. The flags only change which kernels run on the CPU; the GPU and TPU
backends ignore them.

The networks' own XLA:CPU workarounds live in score_jax/models/cpu/, whose docstring lists them all
with this one. This module stays here, outside it: it is process configuration that main.py,
tests/conftest.py and bench/ apply before JAX starts (for every computation, the Inception network
and the samplers included), and it imports nothing but `os`, so applying it loads neither JAX nor
flax.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Each entry: (flag name, value). An empty value of the YNN fusion list = no YNNPACK fusions.
DEFAULTS: tuple[tuple[str, str], ...] = (("xla_cpu_experimental_ynn_fusion_type", ""),)


def with_defaults(xla_flags: str, defaults: tuple[tuple[str, str], ...] = DEFAULTS) -> str:
    """`xla_flags` plus each default flag that it does not set already (the user's choice wins)."""
    given = {part.lstrip("-").split("=", 1)[0] for part in xla_flags.split()}
    extra = [f"--{name}={value}" for name, value in defaults if name not in given]
    return " ".join([xla_flags.strip()] + extra if xla_flags.strip() else extra)


def configure(environ: MutableMapping[str, str] = os.environ) -> None:
    """Add score_jax's CPU defaults to environ['XLA_FLAGS']; call it before JAX's first computation.

    XLA reads XLA_FLAGS once, when the backend starts, so a call after that changes nothing.
    SCORE_JAX_XLA_DEFAULTS=0 leaves XLA_FLAGS as it is (XLA's own defaults, for comparisons).
    """
    if environ.get("SCORE_JAX_XLA_DEFAULTS", "1") == "0":
        return
    environ["XLA_FLAGS"] = with_defaults(environ.get("XLA_FLAGS", ""))

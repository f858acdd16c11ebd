"""XLA:CPU workarounds of the score networks: code that exists only because XLA:CPU fuses badly.

The network files use them through this package's surface only (`cpu.Conv`, `cpu.GroupNorm`,
`cpu.Dropout`, `cpu.grad_barrier`, `cpu.add_bias`, `cpu.add_example_bias`); on GPU and TPU each is
flax's layer or the plain formula.
"""

from score_jax.models.cpu.barrier import grad_barrier
from score_jax.models.cpu.conv import Conv
from score_jax.models.cpu.dropout import Dropout
from score_jax.models.cpu.group_norm import GroupNorm
from score_jax.models.cpu.sums import add_bias, add_example_bias

__all__ = ["Conv", "Dropout", "GroupNorm", "add_bias", "add_example_bias", "grad_barrier"]

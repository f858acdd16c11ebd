"""flax.linen.Conv with its bias added by `sums.add_bias` (same parameters, same maths).

On the CPU the score networks' 2-D convolutions (NHWC, one shared kernel, no mask or feature
groups) take this path; any other use of the layer, every use on GPU and TPU and every use with
SCORE_JAX_CPU_BIAS_SUMS=0 is flax's own code. See sums.py for why the bias gradient matters on the CPU.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from score_jax.models.cpu.sums import add_bias
from score_jax.models.cpu.switches import enabled

Array = jax.Array


def _pair(v) -> tuple[int, int]:
    """flax's broadcast of a stride / dilation argument (None, int or pair) to a pair."""
    if v is None:
        return (1, 1)
    return (v, v) if isinstance(v, int) else tuple(v)


class Conv(nn.Conv):
    """flax.linen.Conv; on the CPU, in the 2-D NHWC case with a bias, the bias goes through sums.add_bias."""

    @nn.compact
    def __call__(self, inputs: Array) -> Array:
        simple = (jax.default_backend() == "cpu" and enabled("bias_sums") and self.use_bias and inputs.ndim == 4
                  and not isinstance(self.kernel_size, int) and len(self.kernel_size) == 2
                  and self.shared_weights and self.mask is None and self.feature_group_count == 1
                  and self.conv_general_dilated is None and self.conv_general_dilated_cls is None
                  and self.padding in ("SAME", "VALID"))
        if not simple:
            return super().__call__(inputs)
        # Parameters in flax's order (kernel, then bias), so initialisation draws the same keys.
        kernel = self.param("kernel", self.kernel_init,
                            tuple(self.kernel_size) + (inputs.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        y = jax.lax.conv_general_dilated(
            inputs, kernel, _pair(self.strides), self.padding, lhs_dilation=_pair(self.input_dilation),
            rhs_dilation=_pair(self.kernel_dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=self.precision)
        return add_bias(y, bias)

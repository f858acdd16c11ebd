"""XLA:CPU workarounds of the score networks: code that exists only because XLA:CPU fuses badly.

On GPU and TPU every name here is flax's layer or the plain formula, so a reader of the network
files (layers.py, layerspp.py, ncsnpp.py, ddpm.py, ncsnv2.py, normalization.py,
up_or_down_sampling.py, classifier.py) can read each `cpu.` line as the paper's layer: `cpu.Conv`
is nn.Conv, `cpu.GroupNorm` nn.GroupNorm, `cpu.Dropout` nn.Dropout, `cpu.add_bias(y, b)` y + b,
`cpu.grad_barrier(x)` x. Parameters, initialisation keys and values are flax's (the official
parity tests run with them on); only the code XLA:CPU compiles differs.

Each workaround: what it replaces; why, measured (before -> after, machine, commit); where it runs;
its off switch (switches.py: "0" turns it off, SCORE_JAX_CPU_WORKAROUNDS=0 turns all of them off).

1. Bias additions whose gradient is a product with ones (sums.py: `add_bias`, `add_example_bias`;
   conv.py: `Conv`, which adds its bias with `add_bias`). Replaces `y + b` under autodiff in every
   convolution, NIN, FIR Conv2d and time-embedding bias. XLA:CPU fused each bias-gradient reduction
   with the whole elementwise backward chain above the layer (GroupNorm / swish backward of several
   blocks joined by skips) and duplicated that chain per reduction; a matrix-vector product with
   ones is a library call XLA does not fuse into, so the gradient is read once. CIFAR-10 DDPM++
   continuous train step, batch 8: 4.85 -> 3.22 s on a 2-core Intel Xeon (AVX-512), fusion thread
   time 3.1 -> 1.6 s/step (b6a2d7e). CPU only, from 16x16 spatial positions up (below, the products
   lose: digits step 86 vs 94 ms). Off: SCORE_JAX_CPU_BIAS_SUMS=0 (Conv is then nn.Conv's own code).

2. GroupNorm with a closed-form VJP whose spatial sums are products with ones (group_norm.py:
   `GroupNorm`, a subclass of nn.GroupNorm). Replaces autodiff of flax's GroupNorm, whose statistics
   and scale / bias gradients became reduce fusions that recompute elementwise chains as strided
   loops. GroupNorm + swish forward and backward at [8, 32, 32, 128]: 11.2 -> 6.3 ms on a 2-core AMD
   EPYC (bench/group_norm.py); the CIFAR-10 DDPM++ step at batch 8 8.42 -> 7.79 s in one run and
   7.72 -> 7.71 s in another, i.e. within that machine's noise (2cbb71a, 107b591). CPU only, from
   16x16 positions up. Off: SCORE_JAX_CPU_GROUP_NORM=0 (nn.GroupNorm's own code).

3. A gradient barrier on every residual block's output (barrier.py: `grad_barrier`, in
   layerspp.skip_sum and layers.ResnetBlockDDPM). Replaces the identity. XLA:CPU fused the
   cotangent of the whole residual stream (skip sums, 1/sqrt(2), the GroupNorm / swish / dropout
   backward of every block above) into each consumer and recomputed it there, longer with depth;
   a one-trip while loop that XLA cannot remove stores it once (values pass through bit for bit).
   CIFAR-10 DDPM++ step at batch 8: 5.34 -> 4.74 s median (0.887), CPU time 10.42 -> 9.30 s, on a
   2-core Intel Xeon; digits unchanged (1.006) (8424abd). CPU only. Off: SCORE_JAX_CPU_GRAD_BARRIER=0.

4. Dropout masks from an unrolled threefry hash, stored once (dropout.py: `Dropout`). Replaces
   nn.Dropout's `jax.random.bernoulli`, whose threefry hash JAX lowers on the CPU (only there) as a
   rolled five-trip while loop that writes the whole [B, H, W, C] state five times; the 20 rounds
   written out are one fusion, and the mask is then stored once (barrier.materialize) instead of
   hashed again in the backward pass. The bits are jax.random's, so the mask is nn.Dropout's for
   the same key, bit for bit. On a 2-core Intel Xeon: CIFAR-10 DDPM++ step at batch 8 4.80 -> 4.69 s
   (0.975), digits (nf 24, batch 64) 95.0 -> 78.7 ms (0.828) (16b2441); storing the mask once
   4.63 -> 4.50 s (0.973), digits neutral (d9406da). CPU only (GPU and TPU get jax.random's unrolled
   lowering already). Off: SCORE_JAX_CPU_DROPOUT=0 (jax.random.bernoulli, as nn.Dropout).

5. XLA:CPU flags (score_jax/xla_cpu.py, not in this package: they are process settings that
   main.py, tests/conftest.py and bench/ apply before JAX starts its CPU backend, for every
   computation, not only the networks). Turns jaxlib 0.10's YNNPACK fusions off: a 3x3 convolution
   at 8x8x64, batch 64, 7.1 / 11.6 / 7.9 -> 3.0 / 3.8 / 4.2 ms (forward / weight / input gradient),
   digits train step 250 -> 160-175 ms, on a 2-core AMD EPYC (AVX2) (a81f3e3). CPU only (GPU and
   TPU ignore the flags); a user's XLA_FLAGS wins. Off: SCORE_JAX_XLA_DEFAULTS=0.
"""

from score_jax.models.cpu.barrier import grad_barrier
from score_jax.models.cpu.conv import Conv
from score_jax.models.cpu.dropout import Dropout
from score_jax.models.cpu.group_norm import GroupNorm
from score_jax.models.cpu.sums import add_bias, add_example_bias
from score_jax.models.cpu.switches import SWITCHES, enabled

__all__ = ["Conv", "Dropout", "GroupNorm", "SWITCHES", "add_bias", "add_example_bias", "enabled", "grad_barrier"]

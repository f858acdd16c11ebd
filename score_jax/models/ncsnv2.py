"""NCSN (v1) and NCSNv2 RefineNet score networks (official score_sde `models/ncsnv2.py`).

Registered names (official): `ncsn` -> NCSN, `ncsnv2_64` -> NCSNv2 (images below 96 px),
`ncsnv2_128` -> NCSNv2_128 (96..128 px), `ncsnv2_256` -> NCSNv2_256 (129..256 px). Parameter trees
carry the official module names (Conv_0, ResidualBlock_<i>, RefineBlock_<i>, InstanceNorm2dPlus_0,
Conv_1, ...), so released official checkpoints load unchanged.

Label convention (SMLD, discrete): `labels [B]` are int32 indices into the DESCENDING noise table
`sigmas = exp(linspace(log sigma_max, log sigma_min, num_scales))`, so label 0 is sigma_max and label
num_scales - 1 is sigma_min; `score_jax.models.score.time_to_labels(VESDE, t, continuous=False)`
produces them. With `scale_by_sigma` the output is divided by `sigmas[labels]`, as officially; NCSNv2
sees the noise level only through that division, NCSN (v1) also through its conditional norms.

References:
  Song & Ermon, "Generative Modeling by Estimating Gradients of the Data Distribution", NeurIPS 2019.
  Song & Ermon, "Improved Techniques for Training Score-Based Generative Models", NeurIPS 2020.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional, Sequence

import flax.linen as nn
import jax

from score_jax.models import layers, ncsn_layers, normalization

Array = jax.Array
Activation = Callable[[Array], Array]

# Backbone stages as (width multiple of nf, dilation); stage 0 is two plain blocks, every later
# stage a 'down' block then a plain block. REFINE lists the RefineBlock widths, deepest first.
_STAGES_64 = ((1, 1), (2, 1), (2, 2), (2, 4))
_REFINE_64 = (2, 2, 2, 1)
_STAGES_128 = ((1, 1), (2, 1), (2, 1), (4, 2), (4, 4))
_REFINE_128 = (4, 2, 2, 1, 1)
_STAGES_256 = ((1, 1), (2, 1), (2, 1), (2, 1), (4, 2), (4, 4))
_REFINE_256 = (4, 2, 2, 2, 1, 1)


class _RefineNet(nn.Module):
    """Shared NCSN/NCSNv2 body: x [B,H,W,C], int labels [B] -> score [B,H,W,C] (see module doc).

    Subclasses fix the architecture through the class constants STAGES, REFINE and CONDITIONAL.
    """

    STAGES: ClassVar[tuple[tuple[int, int], ...]] = _STAGES_64
    REFINE: ClassVar[tuple[int, ...]] = _REFINE_64
    CONDITIONAL: ClassVar[bool] = False

    nf: int = 128
    nonlinearity: str = "elu"
    normalization: str = "InstanceNorm++"
    interpolation: str = "bilinear"
    centered: bool = False
    scale_by_sigma: bool = True
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 232
    num_classes: Optional[int] = None  # rows of NCSN's conditional norms; None means num_scales

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = True) -> Array:
        del train  # no dropout or batch statistics; kept for the common model signature
        act = layers.get_act(self.nonlinearity)
        ncsn_layers.interpolation_method(self.interpolation)  # fail early, before any layer
        num_classes = (self.num_classes or self.num_scales) if self.CONDITIONAL else None
        norm = normalization.get_normalization(self.normalization, self.CONDITIONAL, num_classes)
        y = labels if self.CONDITIONAL else None

        # Data in [0, 1] is mapped to [-1, 1] unless the pipeline already centred it.
        h = x if self.centered else 2 * x - 1.0
        h = ncsn_layers.ncsn_conv3x3(h, self.nf, stride=1, bias=True)
        skips = _backbone(h, y, self.STAGES, self.nf, act, norm)
        h = _refine_path(skips, y, self.REFINE, self.nf, act, norm, self.interpolation)
        h = act(norm()(h) if y is None else norm()(h, y))
        h = ncsn_layers.ncsn_conv3x3(h, x.shape[-1])
        if self.scale_by_sigma:
            sigmas = ncsn_layers.get_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
            h = ncsn_layers.divide_by_sigma(h, labels, sigmas)
        return h


def _backbone(h: Array, y: Optional[Array], stages: Sequence[tuple[int, int]], nf: int,
              act: Activation, norm: normalization.NormFactory) -> list[Array]:
    """ResNet backbone in the caller's scope: the output [B,Hs,Ws,mult*nf] of every stage.

    Conditional (NCSN) blocks when labels y are given, NCSNv2 blocks otherwise.
    """
    block = ncsn_layers.ResidualBlock if y is None else ncsn_layers.ConditionalResidualBlock
    args = () if y is None else (y,)
    skips = []
    for i, (mult, dilation) in enumerate(stages):
        h = block(mult * nf, resample=None if i == 0 else "down", act=act, normalization=norm,
                  dilation=dilation)(h, *args)
        h = block(mult * nf, resample=None, act=act, normalization=norm, dilation=dilation)(h, *args)
        skips.append(h)
    return skips


def _refine_path(skips: Sequence[Array], y: Optional[Array], refine_mults: Sequence[int], nf: int,
                 act: Activation, norm: normalization.NormFactory, interpolation: str) -> Array:
    """RefineNet decoder in the caller's scope: deepest skip first, each block fusing the previous."""
    cond = y is not None
    refine = ncsn_layers.CondRefineBlock if cond else ncsn_layers.RefineBlock
    extra, args = ({"normalizer": norm}, (y,)) if cond else ({}, ())
    ref = None
    last = len(refine_mults) - 1
    for i, (mult, skip) in enumerate(zip(refine_mults, reversed(skips))):
        inputs = [skip] if ref is None else [skip, ref]
        ref = refine(skip.shape[1:3], mult * nf, act=act, interpolation=interpolation,
                     start=i == 0, end=i == last, **extra)(inputs, *args)
    return ref


class NCSNv2(_RefineNet):
    """NCSNv2 for images below 96 px (`ncsnv2_64`): x [B,H,W,C], int labels [B] -> [B,H,W,C]."""


class NCSNv2_128(_RefineNet):  # noqa: N801 (official name)
    """NCSNv2 for 96..128 px images (`ncsnv2_128`): x [B,H,W,C], int labels [B] -> [B,H,W,C]."""

    STAGES: ClassVar[tuple[tuple[int, int], ...]] = _STAGES_128
    REFINE: ClassVar[tuple[int, ...]] = _REFINE_128


class NCSNv2_256(_RefineNet):  # noqa: N801 (official name)
    """NCSNv2 for 129..256 px images (`ncsnv2_256`): x [B,H,W,C], int labels [B] -> [B,H,W,C]."""

    STAGES: ClassVar[tuple[tuple[int, int], ...]] = _STAGES_256
    REFINE: ClassVar[tuple[int, ...]] = _REFINE_256


class NCSN(_RefineNet):
    """NCSN (v1, `ncsn`), noise-conditional InstanceNorm++: x [B,H,W,C], int labels [B] -> [B,H,W,C].

    The official NCSN configs set scale_by_sigma=False: the conditional norms carry the noise level.
    """

    CONDITIONAL: ClassVar[bool] = True

"""NCSN++ / DDPM++ score network (Song et al. 2021), parameter-compatible with the official checkpoints.

One module covers both architectures of the paper: NCSN++ (BigGAN blocks, FIR resampling,
progressive input/output, Fourier noise embedding, output divided by sigma) and DDPM++ (the same
U-Net with positional time embedding and no FIR). Fields carry the official config names
(`config.model.*`, `config.data.image_size/num_channels/centered`); `registry.get_model` fills them.

Submodules are created in the official order, with the official class names, so parameter paths
match the official `NCSNpp` (e.g. `ResnetBlockBigGANpp_3/Conv_1/kernel`) and `init` reproduces its
initial parameters bit for bit. Two options go beyond the official code, both off by default:
  - `remat`: gradient checkpointing of every residual block (`nn.remat`); same parameter paths.
    On XLA:CPU (jax 0.10) it saves nothing: the compiler drops the optimisation barriers and
    CSEs the recomputed convolutions away (measured: identical temp bytes, see bench/models.py).
  - `dtype`: compute dtype (e.g. jnp.bfloat16); parameters stay float32, GroupNorm statistics,
    noise embeddings and attention softmax are computed in float32, and the output is float32.

References:
  Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021, appendix H.
"""

from __future__ import annotations

import functools
import itertools
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.models import layers, layerspp, ncsn_layers
from score_jax.errors import InvalidInputError

Array = jax.Array
Dtype = Any

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
EMBEDDING_TYPES = ("fourier", "positional")


def _check_choice(field: str, value: str, valid: Sequence[str]) -> None:
    """Raise ValueError naming `field` unless value (case-insensitive) is one of `valid`."""
    if not isinstance(value, str) or value.lower() not in valid:
        raise InvalidInputError(f"{field}: got {value!r}, expected one of {tuple(valid)}.")


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ U-Net: x [B,H,W,C], labels [B] (sigma, or time index) -> [B,H,W,C]."""

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    fir: bool = True
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    resblock_type: str = "biggan"
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    init_scale: float = 0.0
    scale_by_sigma: bool = True
    nonlinearity: str = "swish"
    image_size: int = 32
    num_channels: int = 3
    centered: bool = False
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000
    remat: bool = False
    dtype: Optional[Dtype] = None

    def __post_init__(self) -> None:
        _check_choice("resblock_type", self.resblock_type, RESBLOCK_TYPES)
        _check_choice("progressive", self.progressive, PROGRESSIVE)
        _check_choice("progressive_input", self.progressive_input, PROGRESSIVE_INPUT)
        _check_choice("progressive_combine", self.progressive_combine, layerspp.COMBINE_METHODS)
        _check_choice("embedding_type", self.embedding_type, EMBEDDING_TYPES)
        layers.get_act(self.nonlinearity)  # raises ValueError naming `nonlinearity`
        if not self.ch_mult:
            raise InvalidInputError(f"ch_mult: expected at least one resolution level, got {self.ch_mult!r}.")
        super().__post_init__()

    # ---- helpers (called inside the compact __call__, so their submodules live in its scope) ----

    def _embed(self, labels: Array, act: Callable[[Array], Array]) -> tuple[Optional[Array], Array]:
        """Noise-level embedding temb [B, 4 nf] (None if unconditional) and the sigmas [B] used for scaling."""
        if self.embedding_type.lower() == "fourier":
            used_sigmas = labels
            temb = layerspp.GaussianFourierProjection(embedding_size=self.nf, scale=self.fourier_scale)(
                jnp.log(used_sigmas))
        else:
            sigmas = ncsn_layers.get_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
            used_sigmas = sigmas[labels.astype(jnp.int32)]
            temb = layers.get_timestep_embedding(labels, self.nf)
        if not self.conditional:
            return None, used_sigmas
        temb = nn.Dense(self.nf * 4, kernel_init=layers.default_init(), dtype=self.dtype)(temb)
        temb = nn.Dense(self.nf * 4, kernel_init=layers.default_init(), dtype=self.dtype)(act(temb))
        return temb, used_sigmas

    def _resblock_factory(self, act: Callable[[Array], Array]) -> Callable[..., nn.Module]:
        """A factory of residual blocks with official auto-style names, remat-wrapped when `remat`."""
        common = dict(act=act, dropout=self.dropout, init_scale=self.init_scale,
                      skip_rescale=self.skip_rescale, dtype=self.dtype)
        if self.resblock_type.lower() == "ddpm":
            cls, extra = layerspp.ResnetBlockDDPMpp, {}
        else:
            cls, extra = layerspp.ResnetBlockBigGANpp, dict(fir=self.fir, fir_kernel=tuple(self.fir_kernel))
        # nn.remat renames the class (CheckpointResnetBlock...), so blocks are named explicitly with
        # the official per-class counter; `train` (argument 3 counting self) stays a Python bool.
        block_cls = nn.remat(cls, static_argnums=(3,)) if self.remat else cls
        counter = itertools.count()

        def make(**kwargs: Any) -> nn.Module:
            return block_cls(**common, **extra, **kwargs, name=f"{cls.__name__}_{next(counter)}")

        return make

    def _group_norm_act(self, h: Array, act: Callable[[Array], Array]) -> Array:
        """act(GroupNorm(h)) with a GroupNorm created in this scope."""
        return act(layerspp.group_norm(h.shape[-1], self.dtype)(h))

    def _pyramid_conv(self, h: Array, out_ch: int, act: Callable[[Array], Array], init_scale: float) -> Array:
        """3x3 conv of act(GroupNorm(h)) [B,H,W,C] -> [B,H,W,out_ch], for the progressive output path."""
        return layers.ddpm_conv3x3(self._group_norm_act(h, act), out_ch, bias=True, init_scale=init_scale,
                                   dtype=self.dtype)

    # ---- network ----

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = True) -> Array:
        act = layers.get_act(self.nonlinearity)
        temb, used_sigmas = self._embed(labels, act)
        resblock = self._resblock_factory(act)
        attn = functools.partial(layerspp.AttnBlockpp, init_scale=self.init_scale,
                                 skip_rescale=self.skip_rescale, dtype=self.dtype)
        if not self.centered:
            x = 2 * x - 1.0  # data in [0, 1] -> [-1, 1]
        if self.dtype is not None:
            x = x.astype(self.dtype)
        hs = self._down(x, temb, train, resblock, attn)
        h = hs[-1]
        h = resblock()(h, temb, train)
        h = attn()(h)
        h = resblock()(h, temb, train)
        h = self._up(x, h, hs, temb, train, resblock, attn, act)
        if self.scale_by_sigma:
            h = h / used_sigmas.reshape((x.shape[0],) + (1,) * (x.ndim - 1))
        return h.astype(jnp.float32) if self.dtype is not None else h

    def _down(self, x: Array, temb: Optional[Array], train: bool, resblock: Callable[..., nn.Module],
              attn: Callable[..., nn.Module]) -> list[Array]:
        """Encoder: x [B,H,W,C] -> the list of skip activations, coarsest last."""
        progressive_input = self.progressive_input.lower()
        downsample = functools.partial(layerspp.Downsample, with_conv=self.resamp_with_conv, fir=self.fir,
                                       fir_kernel=tuple(self.fir_kernel), dtype=self.dtype)
        pyramid_downsample = functools.partial(layerspp.Downsample, fir=self.fir, fir_kernel=tuple(self.fir_kernel),
                                               with_conv=progressive_input == "residual", dtype=self.dtype)
        input_pyramid = x
        hs = [layers.ddpm_conv3x3(x, self.nf, dtype=self.dtype)]
        for i_level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = resblock(out_ch=self.nf * mult)(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
                hs.append(h)
            if i_level == len(self.ch_mult) - 1:
                continue
            if self.resblock_type.lower() == "ddpm":
                h = downsample()(hs[-1])
            else:
                h = resblock(down=True)(hs[-1], temb, train)
            if progressive_input == "input_skip":
                input_pyramid = pyramid_downsample()(input_pyramid)
                h = layerspp.Combine(method=self.progressive_combine.lower(), dtype=self.dtype)(input_pyramid, h)
            elif progressive_input == "residual":
                input_pyramid = pyramid_downsample(out_ch=h.shape[-1])(input_pyramid)
                input_pyramid = layerspp.skip_sum(input_pyramid, h, self.skip_rescale)
                h = input_pyramid
            hs.append(h)
        return hs

    def _up(self, x: Array, h: Array, hs: list[Array], temb: Optional[Array], train: bool,
            resblock: Callable[..., nn.Module], attn: Callable[..., nn.Module],
            act: Callable[[Array], Array]) -> Array:
        """Decoder: bottleneck h and skips hs -> output [B,H,W,C] (before the sigma scaling)."""
        progressive = self.progressive.lower()
        upsample = functools.partial(layerspp.Upsample, with_conv=self.resamp_with_conv, fir=self.fir,
                                     fir_kernel=tuple(self.fir_kernel), dtype=self.dtype)
        pyramid_upsample = functools.partial(layerspp.Upsample, fir=self.fir, fir_kernel=tuple(self.fir_kernel),
                                             with_conv=progressive == "residual", dtype=self.dtype)
        channels = x.shape[-1]
        pyramid = None
        hs = list(hs)
        num_resolutions = len(self.ch_mult)
        for i_level in reversed(range(num_resolutions)):
            for _ in range(self.num_res_blocks + 1):
                h = resblock(out_ch=self.nf * self.ch_mult[i_level])(jnp.concatenate([h, hs.pop()], axis=-1),
                                                                      temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = attn()(h)
            if progressive == "output_skip":
                if pyramid is not None:
                    pyramid = pyramid_upsample()(pyramid)
                    pyramid = pyramid + self._pyramid_conv(h, channels, act, self.init_scale)
                else:
                    pyramid = self._pyramid_conv(h, channels, act, self.init_scale)
            elif progressive == "residual":
                if pyramid is not None:
                    pyramid = pyramid_upsample(out_ch=h.shape[-1])(pyramid)
                    pyramid = layerspp.skip_sum(pyramid, h, self.skip_rescale)
                    h = pyramid
                else:
                    pyramid = self._pyramid_conv(h, h.shape[-1], act, 1.0)
            if i_level != 0:
                if self.resblock_type.lower() == "ddpm":
                    h = upsample()(h)
                else:
                    h = resblock(up=True)(h, temb, train)
        if hs:
            raise RuntimeError(f"NCSNpp: {len(hs)} skip activations left unused; the U-Net is unbalanced.")
        if progressive == "output_skip":
            return pyramid
        h = self._group_norm_act(h, act)
        return layers.ddpm_conv3x3(h, channels, init_scale=self.init_scale, dtype=self.dtype)

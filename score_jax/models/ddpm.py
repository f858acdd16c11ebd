"""DDPM U-Net (Ho et al.) as in the official score_sde `models/ddpm.py` (registered name `ddpm`).

Parameter trees carry the official module names in the official creation order (Dense_0, Dense_1,
Conv_0, ResnetBlockDDPM_<i>, AttnBlock_<i>, Downsample_<i>, Upsample_<i>, GroupNorm_0, Conv_1), so
released official checkpoints load unchanged.

Label convention: `labels [B]` are the diffusion timesteps fed to the sinusoidal embedding, float or
int: 999 t for VP/sub-VP (continuous) or (N - 1) t (discrete DDPM), see
`score_jax.models.score.time_to_labels`. With `scale_by_sigma` (the official VE-with-DDPM config),
labels must be int32 indices into the descending SMLD table
`exp(linspace(log sigma_max, log sigma_min, num_scales))` and the output is divided by
`sigmas[labels]`, as officially.

References:
  Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020 (diffusion_tf unet.py).
  Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_jax.models import layers, ncsn_layers, normalization

Array = jax.Array


def _time_embedding(labels: Array, nf: int, act: Callable[[Array], Array]) -> Array:
    """Sinusoidal embedding of labels [B] through two dense layers, in the caller's scope -> [B, 4 nf]."""
    temb = layers.get_timestep_embedding(labels, nf)
    temb = nn.Dense(nf * 4, kernel_init=layers.default_init())(temb)
    return nn.Dense(nf * 4, kernel_init=layers.default_init())(act(temb))


class DDPM(nn.Module):
    """DDPM U-Net: x [B,H,W,C], labels [B] (timesteps) -> [B,H,W,C] (noise prediction or score).

    Defaults are the official CIFAR-10 configuration: 35,218,947 parameters. (The DDPM paper's 35.7M
    counts two more 256-channel attention blocks: see `_up`.)
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resamp_with_conv: bool = True
    conditional: bool = True
    nonlinearity: str = "swish"
    normalization: str = "GroupNorm"
    centered: bool = True
    scale_by_sigma: bool = False
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    num_scales: int = 1000

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = True) -> Array:
        act = layers.get_act(self.nonlinearity)
        norm = normalization.get_normalization(self.normalization)
        attn = functools.partial(layers.AttnBlock, normalize=norm)
        resnet = functools.partial(layers.ResnetBlockDDPM, act=act, normalize=norm, dropout=self.dropout)
        block = lambda out_ch=None: lambda h, temb: resnet(out_ch=out_ch)(h, temb, train)  # noqa: E731

        temb = _time_embedding(labels, self.nf, act) if self.conditional else None
        # Data in [0, 1] is mapped to [-1, 1] unless the pipeline already centred it.
        h = x if self.centered else 2 * x - 1.0
        hs = self._down(layers.ddpm_conv3x3(h, self.nf), temb, block, attn)
        h = block()(hs[-1], temb)
        h = attn()(h)
        h = block()(h, temb)
        h = self._up(h, hs, temb, block, attn)
        h = act(norm()(h))
        h = layers.ddpm_conv3x3(h, x.shape[-1], init_scale=0.0)
        if self.scale_by_sigma:
            # For the NCSN loss; the DDPM loss scales by sigma itself.
            sigmas = ncsn_layers.get_sigmas(self.sigma_min, self.sigma_max, self.num_scales)
            h = ncsn_layers.divide_by_sigma(h, labels, sigmas)
        return h

    def _down(self, h: Array, temb: Optional[Array], block: Callable, attn: Callable) -> list[Array]:
        """Encoder: every intermediate activation, for the skip connections (called from __call__)."""
        hs = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = block(self.nf * mult)(hs[-1], temb)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                hs.append(layers.Downsample(with_conv=self.resamp_with_conv)(hs[-1]))
        return hs

    def _up(self, h: Array, hs: list[Array], temb: Optional[Array], block: Callable,
            attn: Callable) -> Array:
        """Decoder consuming the skips hs (popped); attention once per level, after its blocks."""
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = block(self.nf * self.ch_mult[level])(jnp.concatenate([h, hs.pop()], axis=-1), temb)
            # score_sde attends once here; Ho et al.'s TF U-Net attends after every block above.
            if h.shape[1] in self.attn_resolutions:
                h = attn()(h)
            if level != 0:
                h = layers.Upsample(with_conv=self.resamp_with_conv)(h)
        return h

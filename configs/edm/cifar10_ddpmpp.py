"""EDM's config F on CIFAR-10 (unconditional DDPM++), for accelerator users.

Values of NVlabs/edm `train.py --arch=ddpmpp --precond=edm` and its training loop (Karras et al.
2022, Table 2 config F and Table 7), as overrides of `vp/cifar10_ddpmpp_continuous.py` (the same
DDPM++ network otherwise). Not matched: EDM's non-leaky augmentation (p = 0.12 with 9 augmentation
labels to the network; score_jax has no augmentation pipeline), its EMA ramp-up (half-life
min(0.5 Mimg, 0.05 x images seen); here model.ema_warmup's rate min(ema_rate, (1 + step) /
(10 + step))), and its box resampling filter [1, 1] (here DDPM++'s average pooling / nearest
upsampling, the same filter up to the boundary handling).
"""

import ml_collections

from configs.edm import use_edm
from configs.vp import cifar10_ddpmpp_continuous


def get_config() -> ml_collections.ConfigDict:
    """The locked config: EDM config F values on the DDPM++ network."""
    config = cifar10_ddpmpp_continuous.get_config()

    use_edm(config, sigma_data=0.5)
    config.training.batch_size = 512  # 200 Mimg
    config.training.n_iters = 390625

    # data: no x-flips (EDM's --xflip default).
    config.data.random_flip = False

    # model: EDM's capacity (channel_mult [2, 2, 2], no 4x4 level), dropout 0.13.
    model = config.model
    # EMA half-life 0.5 Mimg at batch 512: 0.5 ** (512 / 500000) per step.
    model.ema_rate = 0.99929
    model.ema_warmup = True
    model.dropout = 0.13
    model.ch_mult = (2, 2, 2)

    # optimisation: Adam at 1e-3 (betas 0.9 / 0.999, eps 1e-8), linear ramp-up over 10 Mimg, no
    # gradient clipping (a negative grad_clip).
    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 19531
    optim.grad_clip = -1.

    return config

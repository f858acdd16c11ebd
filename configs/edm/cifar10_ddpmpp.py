"""EDM's config F on CIFAR-10 (unconditional DDPM++), for accelerator users.

Values of NVlabs/edm `train.py --arch=ddpmpp --precond=edm` and its training loop (Karras et al.
2022, Table 2 config F and Table 7), in the official field names. Not matched: EDM's non-leaky
augmentation (p = 0.12 with 9 augmentation labels to the network; score_jax has no augmentation
pipeline), its EMA ramp-up (half-life min(0.5 Mimg, 0.05 x images seen); here model.ema_warmup's
rate min(ema_rate, (1 + step) / (10 + step))), and its box resampling filter [1, 1] (here
DDPM++'s average pooling / nearest upsampling, the same filter up to the boundary handling).
"""

import ml_collections

from configs.default_cifar10_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
    """The locked config: EDM config F values on the DDPM++ network."""
    config = get_default_configs()

    # training: 200 Mimg at batch 512.
    training = config.training
    training.sde = 'vesde'
    training.continuous = True
    training.loss = 'edm'
    training.p_mean = -1.2
    training.p_std = 1.2
    training.batch_size = 512
    training.n_iters = 390625
    training.reduce_mean = True

    # sampling: deterministic Heun, 18 steps (NFE 35), rho = 7, sigma 0.002 .. 80.
    sampling = config.sampling
    sampling.method = 'heun'
    sampling.nfe = 35
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'none'

    # data: [-1, 1], no x-flips (EDM's --xflip default).
    data = config.data
    data.centered = True
    data.random_flip = False

    # model: DDPM++ with EDM's capacity (channel_mult [2, 2, 2], no 4x4 level), dropout 0.13.
    model = config.model
    model.sigma_min = 0.002
    model.sigma_max = 80.
    model.preconditioning = 'edm'
    model.sigma_data = 0.5
    model.name = 'ncsnpp'
    model.scale_by_sigma = False
    # EMA half-life 0.5 Mimg at batch 512: 0.5 ** (512 / 500000) per step.
    model.ema_rate = 0.99929
    model.ema_warmup = True
    model.dropout = 0.13
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = False
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'none'
    model.progressive_input = 'none'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.embedding_type = 'positional'
    model.fourier_scale = 16
    model.conv_size = 3

    # optimisation: Adam at 1e-3 (betas 0.9 / 0.999, eps 1e-8), linear ramp-up over 10 Mimg, no
    # gradient clipping (a negative grad_clip).
    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 19531
    optim.grad_clip = -1.

    return config.lock()

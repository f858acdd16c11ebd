"""NCSN++ (cont.) on the embedded digits with the VE SDE."""

import ml_collections

from configs.default_digits_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
    """The locked config: the NCSN++ flags of `ve/cifar10_ncsnpp_continuous.py` at 8x8."""
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vesde'
    training.continuous = True
    training.reduce_mean = False

    # sampling: the PC choice of the official VE configs, used when sampling.method = 'pc'.
    sampling = config.sampling
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'langevin'

    # data: NCSN++ maps [0, 1] data to [-1, 1] itself, as in the official VE configs.
    data = config.data
    data.centered = False

    # model
    model = config.model
    model.name = 'ncsnpp'
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()  # see vp/digits_ddpmpp_continuous.py
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'none'
    model.progressive_input = 'residual'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.embedding_type = 'fourier'
    model.fourier_scale = 16
    model.conv_size = 3

    return config.lock()

"""DDPM++ (cont.) on the embedded digits with the sub-VP SDE."""

import ml_collections

from configs.default_digits_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
    """The locked config: the DDPM++ flags of `vp/cifar10_ddpmpp_continuous.py` at 8x8 (0.75M params)."""
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'subvpsde'
    training.continuous = True
    training.reduce_mean = True

    # sampling: the PC choice of the official sub-VP configs, used when sampling.method = 'pc'.
    sampling = config.sampling
    sampling.predictor = 'euler_maruyama'
    sampling.corrector = 'none'

    # data
    data = config.data
    data.centered = True

    # model
    model = config.model
    model.name = 'ncsnpp'
    model.scale_by_sigma = False
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 24
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = ()  # see vp/digits_ddpmpp_continuous.py
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

    return config.lock()

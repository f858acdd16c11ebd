"""Training NCSN++ (cont.) on FFHQ 256x256 with the VE SDE.

Same fields and values as the official score_sde `configs/ve/ffhq_256_ncsnpp_continuous.py`.
"""

import ml_collections

from configs.default_lsun_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
    """The locked config: the official values, derived from the base by override."""
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vesde'
    training.continuous = True

    # sampling
    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'langevin'

    # data
    data = config.data
    data.dataset = 'FFHQ'
    data.image_size = 256
    data.tfrecords_path = '/home/yangsong/ncsc/ffhq/ffhq-r08.tfrecords'

    # model
    model = config.model
    model.sigma_max = 348
    model.name = 'ncsnpp'
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 128
    model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
    model.num_res_blocks = 2
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = [1, 3, 3, 1]
    model.skip_rescale = True
    model.resblock_type = 'biggan'
    model.progressive = 'output_skip'
    model.progressive_input = 'input_skip'
    model.progressive_combine = 'sum'
    model.attention_type = 'ddpm'
    model.init_scale = 0.
    model.fourier_scale = 16
    model.conv_size = 3

    return config.lock()

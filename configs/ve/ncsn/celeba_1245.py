"""Training NCSN with NCSNv2 techniques 1, 2, 4 and 5 only on CelebA 64x64.

Same fields and values as the official score_sde `configs/ve/ncsn/celeba_1245.py`.
"""

import ml_collections

from configs.default_celeba_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
    """The locked config: the official values, derived from the base by override."""
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vesde'
    training.continuous = False

    # sampling
    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'none'
    sampling.corrector = 'ald'
    sampling.n_steps_each = 5
    sampling.snr = 0.128

    # model
    model = config.model
    model.name = 'ncsn'
    model.scale_by_sigma = False
    model.num_scales = 500
    model.ema_rate = 0.999
    model.normalization = 'InstanceNorm++'
    model.nonlinearity = 'elu'
    model.nf = 128
    model.interpolation = 'bilinear'

    # optim
    optim = config.optim
    optim.weight_decay = 0
    optim.optimizer = 'Adam'
    optim.lr = 1e-3
    optim.beta1 = 0.9
    # The official file sets amsgrad (off, as in NCSN); score_jax keeps the field for parity.
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 0
    optim.grad_clip = -1.

    return config.lock()

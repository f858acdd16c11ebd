"""Base config for LSUN: official score_sde `configs/default_lsun_configs.py` + score_jax fields.

The official file repeats the CIFAR-10 base; here it is that base with the fields that differ.
"""

import ml_collections

from configs import default_cifar10_configs


def get_default_configs() -> ml_collections.ConfigDict:
    """Official LSUN defaults plus score_jax fields; unlocked, so leaf configs can add fields."""
    config = default_cifar10_configs.get_default_configs()
    training = config.training
    training.batch_size = 64
    training.n_iters = 2400001
    training.snapshot_freq_for_preemption = 5000
    config.sampling.snr = 0.075
    evaluate = config.eval
    evaluate.begin_ckpt = 50
    evaluate.end_ckpt = 96
    evaluate.batch_size = 512
    evaluate.enable_sampling = True
    config.data.dataset = 'LSUN'
    config.data.image_size = 256
    model = config.model
    model.sigma_max = 378.  # a float (official: int 378), so that overrides like 12.5 parse
    model.num_scales = 2000
    model.dropout = 0.
    return config

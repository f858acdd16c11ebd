"""Base config for CelebA: official score_sde `configs/default_celeba_configs.py` + score_jax fields.

The official file repeats the CIFAR-10 base; here it is that base with the fields that differ.
"""

import ml_collections

from configs import default_cifar10_configs


def get_default_configs() -> ml_collections.ConfigDict:
    """Official CelebA defaults plus score_jax fields; unlocked, so leaf configs can add fields."""
    config = default_cifar10_configs.get_default_configs()
    config.sampling.snr = 0.17
    config.eval.begin_ckpt = 1
    config.eval.enable_sampling = True
    config.data.dataset = 'CELEBA'
    config.data.image_size = 64
    config.model.sigma_max = 90.
    return config

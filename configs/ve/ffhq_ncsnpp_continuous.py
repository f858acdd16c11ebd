"""Training NCSN++ (cont.) on FFHQ 1024x1024 with the VE SDE.

Same fields and values as the official score_sde `configs/ve/ffhq_ncsnpp_continuous.py`, which
differs from `ve/celebahq_ncsnpp_continuous.py` only in the fields set here.
"""

import ml_collections

from configs.ve import celebahq_ncsnpp_continuous


def get_config() -> ml_collections.ConfigDict:
    """The locked config: the CelebA-HQ 1024x1024 config with FFHQ's data and training fields."""
    config = celebahq_ncsnpp_continuous.get_config()
    config.training.n_jitted_steps = 2
    config.training.reduce_mean = True
    config.data.dataset = 'FFHQ'
    config.data.tfrecords_path = '/raid/song/ffhq-dataset/ffhq/ffhq-r10.tfrecords'
    return config

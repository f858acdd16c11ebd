"""EDM (Karras et al. 2022) on the embedded digits: the default DDPM++ network, EDM's formulation.

Derived from `vp/digits_ddpmpp_continuous.py` by override, so that the network, optimiser and
training length are the VP default's and only the formulation differs (bench/paper.py compares them).
"""

import ml_collections

from configs.edm import use_edm
from configs.vp import digits_ddpmpp_continuous


def get_config() -> ml_collections.ConfigDict:
    """The locked config: EDM's preconditioning, loss, sigma range and Heun sampler on digits."""
    config = digits_ddpmpp_continuous.get_config()
    # The std of the digits scaled to [-1, 1] (EDM's 0.5 is CIFAR-10's).
    use_edm(config, sigma_data=0.75)
    config.sampling.s_churn = 0.  # deterministic Heun (Algorithm 1), not the VP default's churn
    config.sampling.corrector = 'none'
    return config

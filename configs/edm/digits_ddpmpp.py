"""EDM (Karras et al. 2022) on the embedded digits: the default DDPM++ network, EDM's formulation.

Derived from `vp/digits_ddpmpp_continuous.py` by override, so that the network, optimiser and
training length are the VP default's and only the formulation differs (bench/paper.py compares them).
"""

import ml_collections

from configs.vp import digits_ddpmpp_continuous


def get_config() -> ml_collections.ConfigDict:
    """The locked config: EDM's preconditioning, loss, sigma range and Heun sampler on digits."""
    config = digits_ddpmpp_continuous.get_config()

    # EDM's sigma(t) = t runs as the VE SDE over EDM's noise range (score_jax/edm.py).
    training = config.training
    training.sde = 'vesde'
    training.loss = 'edm'
    training.p_mean = -1.2
    training.p_std = 1.2
    model = config.model
    model.sigma_min = 0.002
    model.sigma_max = 80.
    model.preconditioning = 'edm'
    # The std of the digits scaled to [-1, 1] (EDM's 0.5 is CIFAR-10's).
    model.sigma_data = 0.75

    # sampling: EDM's deterministic Heun (Algorithm 1) with the rho = 7 schedule, 18 steps (NFE 35,
    # the last step Euler to sigma = 0). 'pc' would use VE's reverse diffusion.
    sampling = config.sampling
    sampling.method = 'heun'
    sampling.nfe = 35
    sampling.s_churn = 0.
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'none'

    return config

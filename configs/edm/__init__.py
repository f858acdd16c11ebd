"""EDM's formulation (Karras et al. 2022) on the DDPM++ networks: digits (CPU) and CIFAR-10 (config F)."""

import ml_collections


def use_edm(config: ml_collections.ConfigDict, sigma_data: float) -> None:
    """Switch `config` (in place) to EDM's formulation and its deterministic Heun sampler.

    EDM's sigma(t) = t runs as the VE SDE over EDM's noise range (score_jax/edm.py); the
    preconditioning and the loss of log-normal noise levels are EDM's Table 1 with P_mean -1.2 and
    P_std 1.2. Sampling: Heun with the rho = 7 schedule, 18 steps (NFE 35, the last step Euler to
    sigma = 0); 'pc' would use VE's reverse diffusion.
    """
    training = config.training
    training.sde = 'vesde'
    training.loss = 'edm'
    training.p_mean = -1.2
    training.p_std = 1.2
    model = config.model
    model.sigma_min = 0.002
    model.sigma_max = 80.
    model.preconditioning = 'edm'
    model.sigma_data = sigma_data
    sampling = config.sampling
    sampling.method = 'heun'
    sampling.nfe = 35
    sampling.predictor = 'reverse_diffusion'

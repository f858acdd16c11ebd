"""DDPM++ (cont.) on the embedded digits with the VP SDE: the default config of `main.py`."""

import ml_collections

from configs.default_digits_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
    """The locked config: the DDPM++ flags of `vp/cifar10_ddpmpp_continuous.py` at 8x8 (0.40M params)."""
    config = get_default_configs()

    # training
    training = config.training
    training.sde = 'vpsde'
    training.continuous = True
    training.reduce_mean = True

    # sampling: the PC choice of the official VP configs, used when sampling.method = 'pc'.
    sampling = config.sampling
    sampling.predictor = 'euler_maruyama'
    sampling.corrector = 'none'
    # Snapshots, evaluation and --mode sample use EDM's stochastic Heun sampler: on the quick
    # start's model (bench/samplers_digits.py, 512 samples) it reached FD-digits 12.0 at 21 score
    # evaluations, against 15.8 for PC-1000 (Euler-Maruyama, 1000) and 24.6 for the RK45 ODE
    # solver (80); deterministic few-step solvers stayed at 20-28.
    sampling.method = 'heun'
    sampling.nfe = 20
    sampling.s_churn = 10.

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
    # nf 24 for 1400 steps gave better samples than nf 32 for 1000 in the same wall time
    # (bench/results/quickstart.md: FD-digits 10.04 vs 11.53, 153 vs 156 s, 2 repeats).
    model.nf = 24
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    # No attention: at 8x8 it buys nothing visible and costs ~20% of the step time on CPU.
    model.attn_resolutions = ()
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

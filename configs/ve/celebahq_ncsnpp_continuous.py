"""Training NCSN++ (cont.) on CelebA-HQ 1024x1024 with the VE SDE.

Same fields and values as the official score_sde `configs/ve/celebahq_ncsnpp_continuous.py`.
"""

import ml_collections

from configs.default_celeba_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
    """The locked config: the official values, derived from the CelebA base by override.

    The official file builds its ConfigDict from scratch and omits the fields its run never read
    (`eval.enable_*`, `eval.bpd_dataset`); here they come from the CelebA base, and every field the
    official file sets is set to its value.
    """
    config = get_default_configs()

    # training
    training = config.training
    training.batch_size = 8
    training.n_iters = 2400001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 5000
    training.snapshot_sampling = True
    training.sde = 'vesde'
    training.continuous = True
    training.likelihood_weighting = False
    training.n_jitted_steps = 1
    training.reduce_mean = False

    # sampling
    sampling = config.sampling
    sampling.method = 'pc'
    sampling.predictor = 'reverse_diffusion'
    sampling.corrector = 'langevin'
    sampling.probability_flow = False
    sampling.snr = 0.15
    sampling.n_steps_each = 1
    sampling.noise_removal = True

    # eval
    evaluate = config.eval
    evaluate.batch_size = 1024
    evaluate.num_samples = 50000
    evaluate.begin_ckpt = 1
    evaluate.end_ckpt = 96

    # data
    data = config.data
    data.dataset = 'CelebAHQ'
    data.image_size = 1024
    data.centered = False
    data.random_flip = True
    data.uniform_dequantization = False
    data.num_channels = 3
    data.tfrecords_path = '/atlas/u/yangsong/celeba_hq/-r10.tfrecords'

    # model
    model = config.model
    model.name = 'ncsnpp'
    model.scale_by_sigma = True
    model.sigma_max = 1348
    model.num_scales = 2000
    model.ema_rate = 0.9999
    model.sigma_min = 0.01
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 16
    model.ch_mult = (1, 2, 4, 8, 16, 32, 32, 32)
    model.num_res_blocks = 1
    model.attn_resolutions = (16,)
    model.dropout = 0.
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
    model.embedding_type = 'fourier'

    # optim
    optim = config.optim
    optim.weight_decay = 0
    optim.optimizer = 'Adam'
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.amsgrad = False
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.

    config.seed = 42
    return config.lock()

"""DDPM++ (cont.) with the VP SDE on your own images: a folder of PNG/JPEG files or a uint8 .npz.

Not an official score_sde file: the DDPM++ flags of `vp/cifar10_ddpmpp_continuous.py` at a size that
trains on a CPU (nf 32, two levels, one block each), at 32x32 colour. Set the data on the command
line:
  python main.py --config configs/vp/folder_ddpmpp_continuous.py --workdir runs/mine \\
      --config.data.path=/path/to/images   # add --config.data.num_channels=1 for grayscale
"""

import ml_collections

from configs.default_cifar10_configs import get_default_configs


def get_config() -> ml_collections.ConfigDict:
    """The locked config; data.path ('' here) must be set."""
    config = get_default_configs()

    # training: a small network learns in thousands of steps, not a million.
    training = config.training
    training.sde = 'vpsde'
    training.continuous = True
    training.reduce_mean = True
    training.batch_size = 64
    training.n_iters = 20000
    training.snapshot_freq = 5000
    training.snapshot_freq_for_preemption = 500
    training.log_freq = 50
    training.eval_freq = 500

    # sampling: EDM's stochastic Heun at 20 evaluations, the sampler of the digits quick start.
    sampling = config.sampling
    sampling.method = 'heun'
    sampling.predictor = 'euler_maruyama'
    sampling.corrector = 'none'

    # evaluation: the last snapshot; FID/IS/KID against `--mode fid_stats` of this folder.
    evaluate = config.eval
    evaluate.begin_ckpt = 4
    evaluate.end_ckpt = 4
    evaluate.batch_size = 128
    evaluate.num_samples = 1024

    # data
    data = config.data
    data.dataset = 'folder'
    data.image_size = 32
    data.centered = True

    # model
    model = config.model
    model.name = 'ncsnpp'
    model.scale_by_sigma = False
    model.ema_rate = 0.999
    model.normalization = 'GroupNorm'
    model.nonlinearity = 'swish'
    model.nf = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.attn_resolutions = (16,)
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

    # optimization: a higher rate and a shorter warm-up suit the small network and short run.
    optim = config.optim
    optim.lr = 1e-3
    optim.warmup = 500

    return config.lock()

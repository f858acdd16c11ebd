"""DDPM++ (cont.) with the VP SDE on your own images: a folder of PNG/JPEG files or a uint8 .npz.

Not an official score_sde file: `vp/cifar10_ddpmpp_continuous.py` at a size that trains on a CPU
(nf 32, two levels, one block each), at 32x32 colour. Set the data on the command line:
  python main.py --config configs/vp/folder_ddpmpp_continuous.py --workdir runs/mine \\
      --config.data.path=/path/to/images   # add --config.data.num_channels=1 for grayscale
"""

import ml_collections

from configs.vp import cifar10_ddpmpp_continuous


def get_config() -> ml_collections.ConfigDict:
    """The locked config; data.path ('' here) must be set."""
    config = cifar10_ddpmpp_continuous.get_config()
    config.unlock()

    # training: a small network learns in thousands of steps, not a million.
    training = config.training
    training.batch_size = 64
    training.n_iters = 20000
    training.snapshot_freq = 5000
    training.snapshot_freq_for_preemption = 500
    training.eval_freq = 500

    # sampling: EDM's stochastic Heun at 20 evaluations, the sampler of the digits quick start.
    config.sampling.method = 'heun'

    # evaluation: the last snapshot; FID/IS/KID against `--mode fid_stats` of this folder.
    evaluate = config.eval
    evaluate.begin_ckpt = 4
    evaluate.end_ckpt = 4
    evaluate.batch_size = 128
    evaluate.num_samples = 1024

    config.data.dataset = 'folder'

    # model: the CIFAR-10 DDPM++ at a CPU size.
    model = config.model
    model.nf = 32
    model.ch_mult = (1, 2)
    model.num_res_blocks = 1
    model.ema_rate = 0.999

    # optimization: a higher rate and a shorter warm-up suit the small network and short run.
    config.optim.lr = 1e-3
    config.optim.warmup = 500
    return config.lock()

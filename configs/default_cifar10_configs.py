"""Base config for CIFAR-10: official score_sde `configs/default_cifar10_configs.py` + score_jax fields.

Every official field keeps its name and value, except `training.n_jitted_steps` (see below). Each
score_jax addition is marked "score_jax:" with the reason.
"""

import ml_collections

from configs import default_additions


def get_default_configs() -> ml_collections.ConfigDict:
    """Official CIFAR-10 defaults plus score_jax fields; unlocked, so leaf configs can add fields."""
    config = ml_collections.ConfigDict()
    # training
    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.n_iters = 1300001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    # Extra checkpoints so that a preempted job loses little work.
    training.snapshot_freq_for_preemption = 10000
    training.snapshot_sampling = True
    # score_jax: samples drawn at each snapshot (official: one training batch).
    training.snapshot_num_samples = 128
    training.likelihood_weighting = False
    # score_jax: ScoreFlow's importance-sampled t for likelihood_weighting (same expected loss,
    # lower variance).
    training.importance_weighting = False
    training.continuous = True
    # score_jax: 0 = choose by backend (1 on CPU, where convolution gradients inside a compiled
    # multi-step loop run ~10x slower, see DESIGN.md; 5 on GPU/TPU). The official default is 5.
    training.n_jitted_steps = 0
    training.reduce_mean = False
    # score_jax: on a non-finite loss, 'stop' the run or 'skip' the update.
    training.nan_policy = 'stop'

    # sampling
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16
    # score_jax: tolerances of the adaptive probability-flow ODE sampler (the official code fixes 1e-5).
    sampling.ode_rtol = 1e-5
    sampling.ode_atol = 1e-5
    # score_jax: sampling.nfe and the options of the few-step solvers.
    default_additions.add_fast_sampler_fields(sampling)

    # evaluation
    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.begin_ckpt = 9
    evaluate.end_ckpt = 26
    evaluate.batch_size = 1024
    evaluate.enable_sampling = False
    evaluate.num_samples = 50000
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = 'test'
    # score_jax: passes over the bpd data set with fresh dequantisation noise (official: hard-coded 5).
    evaluate.bpd_num_repeats = 5
    # score_jax: tolerances of the bits/dim ODE solve (the official code fixes 1e-5).
    evaluate.bpd_rtol = 1e-5
    evaluate.bpd_atol = 1e-5
    # score_jax: dequantisation noise of bits/dim: 'uniform' (official) or 'truncated_normal'
    # (ScoreFlow's bound with a non-uniform noise density; its log-density term is added).
    evaluate.dequantization = 'uniform'
    # score_jax: step control of the bits/dim solve: 'per_part' (data and log-density judged apart,
    # ~30x more accurate) or 'rms' (the official RK45 semantics: 1.4-1.9x fewer evaluations).
    evaluate.bpd_error_control = 'per_part'
    # score_jax: sample quality (with enable_sampling), as the official evaluator: IS, FID, KID of
    # the FID Inception (weights: see default_additions.add_inception_weights_fields), against reference
    # statistics ('' = assets/stats/<name>_stats.npz, written by --mode fid_stats from
    # stats_split). num_seeds > 1 repeats the sampling with fresh seeds (EDM), reporting each.
    evaluate.sample_metrics = ('fid', 'is', 'kid')
    default_additions.add_inception_weights_fields(evaluate)
    evaluate.stats_file = ''
    evaluate.stats_split = 'train'
    evaluate.num_seeds = 1

    # score_jax: --mode sample and --mode train_classifier.
    default_additions.add_sample_section(config, num=64, scale=1.)
    default_additions.add_classifier_section(config, name='wideresnet_noise_conditional', lr=2e-4,
                                              n_iters=200000, ema_rate=0.999, eps=1e-5)

    # data
    config.data = data = ml_collections.ConfigDict()
    data.dataset = 'CIFAR10'
    data.image_size = 32
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 3
    # score_jax: tensorflow-datasets directory ('' = tfds default) and whether tfds may download.
    data.data_dir = ''
    data.download = False
    # score_jax: the TFRecords file (or glob) of FFHQ / CelebA-HQ ('' for tfds data sets).
    data.tfrecords_path = ''
    # score_jax: data.dataset = 'folder' (your own images).
    default_additions.add_folder_fields(data)
    default_additions.add_loader_fields(data)

    # model
    config.model = model = ml_collections.ConfigDict()
    model.sigma_min = 0.01
    # score_jax: a float (official: int 50, same value), so that --config.model.sigma_max=12.5
    # parses; the leaf configs that set an int get it cast to float.
    model.sigma_max = 50.
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.
    model.dropout = 0.1
    model.embedding_type = 'fourier'
    # score_jax: rematerialise blocks to save memory, compute dtype, and EMA warm-up
    # (rate min(ema_rate, (1 + step) / (10 + step)) when True).
    model.remat = False
    model.dtype = 'float32'
    model.ema_warmup = False

    # optimization
    config.optim = optim = ml_collections.ConfigDict()
    # score_jax: a float (official: int 0), so that --config.optim.weight_decay=1e-4 parses.
    optim.weight_decay = 0.
    optim.optimizer = 'Adam'
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.

    config.seed = 42
    # score_jax: EDM's preconditioning and loss (off).
    default_additions.add_edm_fields(config)
    return config

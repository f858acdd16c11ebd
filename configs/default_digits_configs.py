"""Base config for the embedded digits data set (scikit-learn's 1797 handwritten digits, 8x8x1).

Not an official score_sde file: a small config that trains on a 2-core CPU in minutes. The field
names are those of `default_cifar10_configs.py`; the values come from a prototype run on such a CPU
(a DDPM++ of this size at native 8x8 gave recognisable digits after ~1000 steps, at 18-20 steps/s
with batch 64).
"""

import ml_collections

from configs import default_additions


def get_default_configs() -> ml_collections.ConfigDict:
    """Digits defaults with the official field names; unlocked, so leaf configs can add fields."""
    config = ml_collections.ConfigDict()
    # training
    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 64
    training.n_iters = 1400
    training.snapshot_freq = 700
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 100
    training.snapshot_sampling = True
    # score_jax: samples drawn at each snapshot (official: one training batch).
    training.snapshot_num_samples = 64
    training.likelihood_weighting = False
    # score_jax: ScoreFlow's importance-sampled t for likelihood_weighting (same expected loss,
    # lower variance).
    training.importance_weighting = False
    training.continuous = True
    # 0 = choose by backend (1 on CPU, 5 on GPU/TPU); see default_cifar10_configs.py.
    training.n_jitted_steps = 0
    training.reduce_mean = True
    training.nan_policy = 'stop'

    # sampling: snapshots use the probability-flow ODE with loose tolerances, a few seconds on CPU.
    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = 'ode'
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16
    sampling.ode_rtol = 1e-3
    sampling.ode_atol = 1e-3
    # score_jax: sampling.nfe and the options of the few-step solvers.
    default_additions.add_fast_sampler_fields(sampling)

    # evaluation: checkpoint n is the snapshot at step n * snapshot_freq; the quick start
    # evaluates only the last one (2 = step 1400). One batch of 304 covers the 297 test digits.
    config.eval = evaluate = ml_collections.ConfigDict()
    evaluate.begin_ckpt = 2
    evaluate.end_ckpt = 2
    evaluate.batch_size = 304
    evaluate.enable_sampling = True
    # Two rounds of eval.batch_size: enough for a stable FD-digits (64-d features).
    evaluate.num_samples = 608
    evaluate.enable_loss = True
    evaluate.enable_bpd = True
    evaluate.bpd_dataset = 'test'
    evaluate.bpd_num_repeats = 1
    # Tolerances of the bits/dim ODE solve (the official code fixes 1e-5), loose here so that
    # the quick start evaluates in under a minute.
    evaluate.bpd_rtol = 1e-3
    evaluate.bpd_atol = 1e-3
    # score_jax: dequantisation noise of bits/dim: 'uniform' (official) or 'truncated_normal'
    # (ScoreFlow's bound with a non-uniform noise density; its log-density term is added).
    evaluate.dequantization = 'uniform'
    # score_jax: step control of the bits/dim solve: 'per_part' (data and log-density judged apart,
    # ~30x more accurate) or 'rms' (the official RK45 semantics: 1.4-1.9x fewer evaluations). The
    # quick start takes 'rms': on its earlier nf-32 model 86 evaluations and 79 s against 134 and
    # 108 s, for 5.222 against 5.216 bits/dim (bench/quickstart.py).
    evaluate.bpd_error_control = 'rms'
    # Sample quality by the shipped digits classifier (not FID: no Inception offline): the
    # Frechet distance of its features to the train split's, its Inception-Score formula, improved
    # precision and recall (k-NN manifolds of the same features: realistic strokes, classes
    # covered) and the class histogram. stats_file '' = computed from the train split on the fly.
    evaluate.sample_metrics = ('fd_digits', 'is_digits', 'precision_digits', 'recall_digits',
                               'class_histogram')
    default_additions.add_inception_weights_fields(evaluate)
    evaluate.stats_file = ''
    evaluate.stats_split = 'train'
    evaluate.num_seeds = 1

    # score_jax: --mode sample and --mode train_classifier.
    # Guidance scale of 'conditional': the digits classifier agreed with the label asked for on
    # 70% of the samples at scale 1 and 97.5% at scale 4 (40 samples of the quick start model).
    default_additions.add_sample_section(config, num=16, scale=4.)
    default_additions.add_classifier_section(config, name='digits_noise_conditional', lr=2e-3,
                                              n_iters=1500, ema_rate=0.99, eps=1e-3)

    # data
    config.data = data = ml_collections.ConfigDict()
    data.dataset = 'digits'
    data.image_size = 8
    # A mirrored digit is not a digit.
    data.random_flip = False
    data.centered = True
    data.uniform_dequantization = False
    data.num_channels = 1
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
    # Largest distance between two digits scaled to [0, 1] is 4.81 (NCSNv2 technique 1).
    model.sigma_max = 5.
    model.num_scales = 1000
    model.beta_min = 0.1
    model.beta_max = 20.
    model.dropout = 0.1
    model.embedding_type = 'fourier'
    model.remat = False
    model.dtype = 'float32'
    # Without warm-up an EMA at 0.999 would still be mostly the initialisation after 1000 steps.
    model.ema_warmup = True

    # optimization
    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0.
    optim.optimizer = 'Adam'
    optim.lr = 1e-3
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 100
    optim.grad_clip = 1.

    config.seed = 42
    # score_jax: EDM's preconditioning and loss (off).
    default_additions.add_edm_fields(config)
    return config

"""Config fields that score_jax adds to every base config (no official counterpart), in one place.

Each base calls these with its own values; every field is documented here once.
"""

import ml_collections


def add_fast_sampler_fields(sampling: ml_collections.ConfigDict) -> None:
    """The few-step solvers of sampling.fast_sample, picked by sampling.method.

    sampling.method = 'ddim', 'dpm_solver', 'dpm_solver++', 'unipc', 'heun', 'euler' or
    'adaptive_sde' uses `nfe` score evaluations (denoising included; the budget of 'adaptive_sde')
    and the options below, '' or 0 meaning the solver's own default: order, dpm_method ('singlestep' |
    'multistep'), skip_type ('logSNR' | 'time_uniform' | 'time_quadratic' | 'edm'), eta (DDIM),
    s_churn, s_tmin, s_tmax, s_noise (EDM's stochastic sampler, Algorithm 2: churn only at noise
    levels in [s_tmin, s_tmax]), rel_tol / abs_tol (adaptive_sde), rho (the 'edm' time schedule's
    exponent), prediction ('noise' | 'data') and unipc_variant ('bh1' | 'bh2') of UniPC, and
    grid: UniPC's time grid, nfe times from T down to eps (nfe + 1 with noise_removal = False),
    e.g. from `score_jax.grid_search.search_grid`; () = skip_type's grid.
    """
    sampling.nfe = 20
    sampling.order = 0
    sampling.dpm_method = ''
    sampling.skip_type = ''
    sampling.eta = 0.0
    sampling.s_churn = 0.0
    sampling.s_tmin = 0.0
    sampling.s_tmax = 0.0
    sampling.s_noise = 0.0
    sampling.rel_tol = 0.0
    sampling.abs_tol = 0.0
    sampling.rho = 0.0
    sampling.prediction = ''
    sampling.unipc_variant = ''
    sampling.grid = ()


def add_edm_fields(config: ml_collections.ConfigDict) -> None:
    """EDM's formulation (score_jax/edm.py, docs/training.md "EDM"); off by default.

    model.preconditioning: 'none' (the official conventions) or 'edm' (the network is F of
    D = c_skip x + c_out F(c_in x, ln(sigma) / 4), for data of std model.sigma_data; VE SDE only).
    training.loss: '' (the official choice by SDE and training.continuous) or 'edm' (ln sigma ~
    N(training.p_mean, training.p_std^2), weighted by lambda(sigma) = 1 / c_out^2).
    """
    config.model.preconditioning = 'none'
    config.model.sigma_data = 0.5
    config.training.loss = ''
    config.training.p_mean = -1.2
    config.training.p_std = 1.2


def add_sample_section(config: ml_collections.ConfigDict, *, num: int, scale: float) -> None:
    """config.sample, for --mode sample (score_jax/sample.py).

    The task; how many inputs / samples (`num`, in batches of batch_size = num); their source
    ('' = the evaluation split, else an .npz or a PNG folder); the inpainting mask (left_half,
    centre_box, random_pixels with mask_fraction known, or a mask file); the checkpoint (n = step
    n * snapshot_freq, 0 = newest); the output folder under the workdir; the points of each
    interpolation; the classifier guidance scale of 'conditional'.
    """
    config.sample = sample = ml_collections.ConfigDict()
    sample.task = 'unconditional'
    sample.num = num
    sample.batch_size = num
    sample.input = ''
    sample.mask = 'left_half'
    sample.mask_fraction = 0.5
    sample.ckpt = 0
    sample.folder = 'sample'
    sample.num_points = 8
    sample.scale = scale


def add_classifier_section(config: ml_collections.ConfigDict, *, name: str, lr: float,
                           n_iters: int, ema_rate: float, eps: float) -> None:
    """config.classifier, for --mode train_classifier: the noise-conditional classifier of
    class-conditional sampling, trained by cross-entropy on data perturbed to t ~ U(eps, T)
    with Adam at `lr` and an EMA at `ema_rate`, in batches of 128."""
    config.classifier = classifier = ml_collections.ConfigDict()
    classifier.name = name
    classifier.lr = lr
    classifier.batch_size = 128
    classifier.n_iters = n_iters
    classifier.ema_rate = ema_rate
    classifier.eps = eps


def add_folder_fields(data: ml_collections.ConfigDict) -> None:
    """Training on your own images: data.dataset = 'folder' (score_jax/folder_data.py).

    path: a folder of PNG / JPEG images (class subfolders, if any, are labels 0..K-1 in sorted
    order; hidden files, Thumbs.db and desktop.ini are skipped, any other file is refused) or an
    .npz of uint8 images [N, H, W, C] under 'images' (optional integer 'labels'). It is prepared
    once into the tfds data dir (data.data_dir) and prepared again when a file changes. Images of
    any size are resized (shorter side to data.image_size, then the centre square); all must be
    grayscale (data.num_channels = 1) or all colour (3).
    eval_fraction: the share of the images held out as the evaluation split, chosen by a
    permutation with a fixed seed (0); 0 = evaluate on the training images.
    """
    data.path = ''
    data.eval_fraction = 0.1


def add_loader_fields(data: ml_collections.ConfigDict) -> None:
    """How training batches are built (score_jax/datasets.py, TrainIterator).

    num_workers: processes that decode and augment whole batches ahead of the train step; 0 =
    in the training process (two prefetch threads). Batches are the same for every value, so a
    run may resume with another. Worth it on an accelerator host with data larger than the
    decoded cache (512 MB) or large images: see docs/data_loading.md.
    """
    data.num_workers = 0


def add_inception_weights_fields(evaluate: ml_collections.ConfigDict) -> None:
    """Where the FID Inception weights come from (metrics fid, is, kid).

    inception_weights: a local file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, the JAX
    ports' pickle, or an .npz state dict); '' = pytorch-fid's release file, downloaded once from
    inception_url into $SCORE_JAX_CACHE (default ~/.cache/score_jax) and used only if its
    SHA-256 is inception_sha256.
    """
    evaluate.inception_weights = ''
    evaluate.inception_url = ('https://github.com/mseitzer/pytorch-fid/releases/download/'
                              'fid_weights/pt_inception-2015-12-05-6726825d.pth')
    evaluate.inception_sha256 = '6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2'

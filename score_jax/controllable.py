"""Controllable generation with an unconditional score model: imputation, inpainting, colorization
and class-conditional sampling, all run by `sampling.pc_sample` (one compiled PC loop).

Imputation of a known orthogonal projection y = P x0 (P linear, idempotent, self-adjoint):
after every corrector and predictor update at time t, the P-part of the state is replaced by a
forward-diffused copy of y, P (mean(x0, t) + std(t) z) = mean(y, t) + std(t) P z, fresh z each time
(the perturbation kernel is isotropic, so its P-part only needs y). Inpainting is P = mask *
(a {0, 1} mask); colorization is P = the per-pixel projection on the gray direction (1, 1, 1)/sqrt 3
of the official orthonormal decoupling basis.

x_mean (the update without its last noise, returned with `denoise`): the official code builds it
from the already-replaced x, so its unknown part carried the noise the denoising step should have
removed. Here the unknown part is the update's own x_mean and the known part is the noise-free
mean(y, t) (at t = eps almost y itself); after the loop the known part is set to y exactly, so the
returned samples satisfy P x = y to rounding (inpainting: bit for bit).

References:
  Song et al., "Score-Based Generative Modeling through Stochastic Differential Equations",
  ICLR 2021, Section 5 and Appendix I (imputation, colorization, conditional sampling).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import checks
from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax.errors import InvalidInputError

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
LogitsFn = Callable[[Array, Array], Array]
ProjectorFn = Callable[[Array], Array]

# Columns: the gray direction (1, 1, 1)/sqrt 3 and two orthonormal colour directions; the official
# `M` of controllable_generation.py to float32 rounding. decouple(x) = x @ COLOR_BASIS.
COLOR_BASIS = np.stack([np.ones(3) / np.sqrt(3.0),
                        np.array([-2.0, 1.0, 1.0]) / np.sqrt(6.0),
                        np.array([0.0, 1.0, -1.0]) / np.sqrt(2.0)], axis=1)
MASK_KINDS = ("left_half", "centre_box", "random_pixels")


def _pytree(fn: Callable) -> jax.tree_util.Partial:
    """fn as a pytree whose arrays (parameters, data, masks) are leaves, so jit traces them."""
    return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


@dataclasses.dataclass(frozen=True)
class _ReplaceKnown:
    """P-part of (x, x_mean) <- (mean(y, t) + std(t) P z, mean(y, t)); the rest kept.

    A hashable static part (the SDE) so the Partial around it keeps only arrays as leaves.
    """

    sde: sde_lib.SDE

    def __call__(self, projector, y, key, x, x_mean, t):
        mean_y, std = self.sde.marginal_prob(y, t)
        noise = projector(jax.random.normal(key, x.shape, x.dtype))
        x = x - projector(x) + mean_y + sde_lib.batch_broadcast(std, x) * noise
        return x, x_mean - projector(x_mean) + mean_y


def impute(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, measurement: Array,
           projector: ProjectorFn, **pc_options: Any) -> tuple[Array, int]:
    """Sample x [B, ...] from p(x | P x = measurement) for an orthogonal projector P: -> (x, nfe).

    Args:
      key: PRNG key.
      sde, score_fn: as in sampling.pc_sample.
      measurement: y = P x0 [B, ...], the known part (already projected).
      projector: P(v [B, ...]) -> [B, ...], linear, idempotent and self-adjoint (a
        `jax.tree_util.Partial` keeps its arrays traced).
      **pc_options: predictor, corrector, snr, n_steps, eps, denoise, probability_flow of pc_sample.

    Returns:
      (samples [B, ...] with P samples = measurement, nfe as pc_sample).
    """
    checks.check_sde(sde)
    y = checks.check_data(measurement, "measurement")
    if not callable(projector):
        raise InvalidInputError(f"projector must be a callable P(x) -> x, got "
                                f"{type(projector).__name__}.")
    for name in ("project", "x_init"):
        if name in pc_options:
            raise InvalidInputError(f"{name} is set by impute itself; drop it from the options.")
    projector = _pytree(projector)
    prior_key, init_key, loop_key = jax.random.split(key, 3)
    t_start = jnp.full(y.shape[:1], sde.T, y.dtype)
    x_init, _ = _ReplaceKnown(sde)(projector, y, init_key,
                               sde.prior_sampling(prior_key, y.shape).astype(y.dtype),
                               jnp.zeros_like(y), t_start)
    project = jax.tree_util.Partial(_ReplaceKnown(sde), projector, y)
    x, nfe = sampling.pc_sample(loop_key, sde, score_fn, y.shape, project=project, x_init=x_init,
                                **pc_options)
    return x - projector(x) + y, nfe


def _mask_projector(mask, v):
    return mask * v


def _check_mask(mask: Array, data: Array) -> Array:
    """mask as a {0, 1} float array that broadcasts to data's shape."""
    mask = jnp.asarray(mask)
    try:
        full = jnp.broadcast_to(mask, data.shape)
    except ValueError:
        raise InvalidInputError(f"mask of shape {mask.shape} does not broadcast to the data's shape "
                                f"{data.shape}; give a mask of the data's shape.") from None
    if not bool(jnp.all((full == 0) | (full == 1))):
        raise InvalidInputError("mask must hold only 0 (unknown) and 1 (known) values; threshold it "
                                "first.")
    return full.astype(data.dtype)


def inpaint(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, data: Array, mask: Array,
            **pc_options: Any) -> tuple[Array, int]:
    """Fill the pixels of data [B, ...] where mask == 0 given those where mask == 1: -> (x, nfe).

    The known pixels of the result equal `data` exactly. See the module docstring for the method.
    """
    data = checks.check_data(data, "data")
    mask = _check_mask(mask, data)
    projector = jax.tree_util.Partial(_mask_projector, mask)
    return impute(key, sde, score_fn, mask * data, projector, **pc_options)


def _gray_projector(basis, v):
    """Projection of the channel vectors v [..., 3] on basis[:, 0] (the gray direction)."""
    gray = basis[:, :1]
    return (v @ gray) @ gray.T


def gray_projection(x: Array) -> Array:
    """Each pixel's channels replaced by their mean, x [..., 3] -> [..., 3]."""
    return _gray_projector(jnp.asarray(COLOR_BASIS, x.dtype), x)


def colorize(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, gray: Array,
             **pc_options: Any) -> tuple[Array, int]:
    """Colour RGB images from gray ones [B, H, W, 3] (3 equal channels): -> (rgb [B, H, W, 3], nfe).

    The gray coordinate of the decoupling basis COLOR_BASIS is held, the two colour coordinates are
    sampled; gray_projection(rgb) equals gray_projection(gray) (= gray for equal channels) to float
    rounding. An input with unequal channels is taken as its gray projection.
    """
    gray = checks.check_data(gray, "gray")
    if gray.ndim != 4 or gray.shape[-1] != 3:
        raise InvalidInputError(f"gray must be images [B, H, W, 3] with 3 equal channels, got shape "
                                f"{gray.shape}; repeat a 1-channel image 3 times on the last axis.")
    projector = jax.tree_util.Partial(_gray_projector, jnp.asarray(COLOR_BASIS, gray.dtype))
    return impute(key, sde, score_fn, projector(gray), projector, **pc_options)


def _guided_score(score_fn, logits_fn, labels, scale, x, t):
    """score(x, t) + scale grad_x log softmax(logits(x, t))[labels]."""

    def log_prob(x):
        logp = jax.nn.log_softmax(logits_fn(x, t), axis=-1)
        return jnp.sum(jnp.take_along_axis(logp, labels[:, None], axis=-1))

    return score_fn(x, t) + scale * jax.grad(log_prob)(x)


def guided_score_fn(score_fn: ScoreFn, classifier_logits_fn: LogitsFn, labels: Array,
                    scale: float = 1.0) -> jax.tree_util.Partial:
    """score_fn(x, t) + scale grad_x log p(labels | x, t) as a score_fn pytree (x [B, ...], t [B])."""
    return jax.tree_util.Partial(_guided_score, _pytree(score_fn), _pytree(classifier_logits_fn),
                                 labels, scale)


def conditional_sample(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn,
                       classifier_logits_fn: LogitsFn, labels: Array, scale: float = 1.0,
                       *, shape: tuple[int, ...], **pc_options: Any) -> tuple[Array, int]:
    """Class-conditional samples of `shape` for labels [B] with a noise-conditional classifier.

    The sampler follows score + scale * grad_x log softmax(classifier_logits_fn(x, t))[label]; the
    classifier takes the diffusion time t itself (see models.classifier.classifier_logits_fn), so
    this holds for VE, VP and sub-VP alike. nfe counts score evaluations (each also evaluates the
    classifier and its input gradient once).

    Returns:
      (samples [*shape], nfe as pc_sample).
    """
    shape = checks.check_shape(shape)
    labels = jnp.asarray(labels)
    if labels.shape != shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise InvalidInputError(f"labels must be integers of shape [batch] = {shape[:1]}, got "
                                f"shape {labels.shape} dtype {labels.dtype}.")
    if not callable(classifier_logits_fn):
        raise InvalidInputError("classifier_logits_fn must be a callable fn(x, t) -> logits [B, K].")
    checks.check_positive("scale", scale)
    guided = guided_score_fn(score_fn, classifier_logits_fn, labels,
                             jnp.asarray(scale, jnp.result_type(float)))
    return sampling.pc_sample(key, sde, guided, shape, **pc_options)


def make_mask(kind: str, shape: tuple[int, ...], key: Array | None = None,
              fraction: float = 0.5) -> np.ndarray:
    """A {0, 1} float32 mask [B, H, W, C] (1 = known) of one kind in MASK_KINDS.

    'left_half': the left W//2 columns known; 'centre_box': all known but a centred H//2 x W//2
    box; 'random_pixels': each pixel (all channels together) known with probability `fraction`
    (needs `key`). A user's mask file is read by the runner and passed to inpaint directly.
    """
    kind = checks.lookup("kind", kind, dict.fromkeys(MASK_KINDS))
    shape = checks.check_shape(shape)
    if len(shape) != 4:
        raise InvalidInputError(f"shape must be images [B, H, W, C], got {shape}.")
    b, h, w, c = shape
    mask = np.ones(shape, np.float32)
    if kind == "left_half":
        mask[:, :, w // 2:] = 0.0
    elif kind == "centre_box":
        mask[:, h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = 0.0
    else:
        if key is None:
            raise InvalidInputError("make_mask('random_pixels', ...) needs a PRNG key.")
        if not 0.0 < fraction < 1.0:
            raise InvalidInputError(f"fraction must be in (0, 1), got {fraction!r}.")
        known = np.asarray(jax.random.bernoulli(key, fraction, (b, h, w, 1)))
        mask = np.broadcast_to(known, shape).astype(np.float32)
    return mask

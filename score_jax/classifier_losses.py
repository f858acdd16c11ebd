"""Training a noise-conditional classifier: cross-entropy on perturbed data at t ~ U(eps, T).

A batch is (x [B, ...], labels [B]); x_t = mean(x, t) + std(t) z as in the score-matching loss,
and the classifier is conditioned on std(t) (models.classifier.noise_level). The loss has the
`loss_fn(key, params, model_state, batch)` signature of score_jax.losses, so the optimisation step,
EMA and non-finite handling are those of train_state.make_train_step.

References:
  Song et al., "Score-Based Generative Modeling through SDEs", ICLR 2021, Appendix I.1.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from score_jax import checks
from score_jax import sde as sde_lib
from score_jax import train_state
from score_jax.models import classifier

Array = jax.Array


def get_classifier_loss_fn(sde: sde_lib.SDE, apply_fn: Callable, *, eps: float = 1e-5,
                           train: bool = True, input_mean: Optional[tuple] = None,
                           input_std: Optional[tuple] = None) -> Callable:
    """loss_fn(key, params, model_state, (x [B, ...], labels [B])) -> (mean cross-entropy, state)."""
    checks.check_sde(sde)
    eps = checks.check_eps(sde, eps)
    del train  # the classifiers here have no dropout or batch statistics

    def loss_fn(key: Array, params: Any, model_state: Any, batch: tuple[Array, Array]):
        x, labels = batch
        key_t, key_z = jax.random.split(key)
        t = jax.random.uniform(key_t, (x.shape[0],), x.dtype, minval=eps, maxval=sde.T)
        mean, std = sde.marginal_prob(x, t)
        x_t = mean + sde_lib.batch_broadcast(std, x) * jax.random.normal(key_z, x.shape, x.dtype)
        logits = classifier.classifier_logits_fn(sde, apply_fn, params, input_mean=input_mean,
                                                 input_std=input_std)(x_t, t)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        return jnp.mean(loss), model_state

    return loss_fn


def make_classifier_train_step(sde: sde_lib.SDE, apply_fn: Callable,
                               optimizer: optax.GradientTransformation, *, eps: float = 1e-5,
                               ema_rate: float = 0.999, **loss_options: Any
                               ) -> train_state.TrainStep:
    """step(state, (x, labels)) -> (state, {loss, grad_norm, lr, finite}) of the classifier loss."""
    loss_fn = get_classifier_loss_fn(sde, apply_fn, eps=eps, train=True, **loss_options)
    return train_state.make_train_step(loss_fn, optimizer, ema_rate=ema_rate)


def accuracy(sde: sde_lib.SDE, apply_fn: Callable, params: Any, x: Array, labels: Array,
             t: float, **logits_options: Any) -> float:
    """Fraction of x [B, ...] perturbed to time t (t = eps: clean) classified as labels [B]."""
    t_vec = jnp.full(x.shape[:1], t, x.dtype)
    mean, _ = sde.marginal_prob(x, t_vec)
    logits = classifier.classifier_logits_fn(sde, apply_fn, params, **logits_options)(mean, t_vec)
    return float(jnp.mean(jnp.argmax(logits, -1) == labels))

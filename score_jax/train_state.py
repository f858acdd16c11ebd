"""The training state and the pure train / eval step factories (no sharding, no host I/O).

`make_train_step(...)` returns `step(state, x) -> (state, metrics)`; the runtime layer jits it over
a device mesh (or scans several steps per call with `make_multi_step`). The per-step key is
`fold_in(state.key, state.step)`, so a run resumed from a checkpoint draws the same noise as the
uninterrupted one. A non-finite loss or gradient never reaches the parameters: the step reports
`finite=False` and, by `nan_policy`, either skips the update ('skip') or returns the state it was
given ('stop'), so the runner can stop with a state that is safe to checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax
import jax
import jax.numpy as jnp
import optax

from score_jax import optim
from score_jax.errors import InvalidInputError

Array = jax.Array
LossFn = Callable[[Array, Any, Any, Array], tuple[Array, Any]]
StepFn = Callable[["TrainState", Array], tuple["TrainState", dict]]

NAN_POLICIES = ("stop", "skip")
# Eval keys fold this into the step key so evaluation noise never repeats a training draw.
_EVAL_STREAM = 0x5EED


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries between steps (a pytree, checkpointable as is)."""

    step: Array          # [] int32, number of steps taken (skipped ones included)
    params: Any          # model parameters
    opt_state: Any       # optax state of `optimizer`
    params_ema: Any      # exponential moving average of params, used for evaluation and sampling
    model_state: Any     # non-parameter collections (e.g. batch statistics); {} if none
    key: Array           # [2] uint32 base key; the key of step s is fold_in(key, s)


def init_train_state(key: Array, params: Any, optimizer: optax.GradientTransformation, *,
                     model_state: Optional[Any] = None) -> TrainState:
    """Step-0 state: optimiser initialised on params, EMA equal to params, base key `key`."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        # Raw uint32 key data checkpoints with any orbax handler; typed keys need special care.
        key = jax.random.key_data(key)
    # A separate copy, so a runner that donates the state never donates one buffer twice.
    params_ema = jax.tree.map(jnp.copy, params)
    return TrainState(step=jnp.zeros([], jnp.int32), params=params,
                      opt_state=optimizer.init(params), params_ema=params_ema,
                      model_state={} if model_state is None else model_state, key=key)


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """One optimisation step: (state, x [B, ...]) -> (state, {loss, grad_norm, lr, finite})."""

    loss_fn: LossFn
    optimizer: optax.GradientTransformation
    ema_rate: float
    ema_warmup: bool = False
    nan_policy: str = "stop"

    def __call__(self, state: TrainState, x: Array) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(state.key, state.step)
        grad_fn = jax.value_and_grad(self.loss_fn, argnums=1, has_aux=True)
        (loss, model_state), grads = grad_fn(key, state.params, state.model_state, x)
        grad_norm = optax.tree.norm(grads)
        rate = optim.ema_rate(state.step, self.ema_rate, self.ema_warmup)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        held = state.replace(step=state.step + 1) if self.nan_policy == "skip" else state
        if isinstance(self.optimizer, optim.OfficialAdam):
            params, opt_state, params_ema, lr = optim.guarded_update(
                self.optimizer, grads, grad_norm, finite, state.params, state.opt_state,
                state.params_ema, rate)
            new = state.replace(step=jnp.where(finite, state.step + 1, held.step),
                                params=params, opt_state=opt_state, params_ema=params_ema,
                                model_state=optax.tree.where(finite, model_state, state.model_state))
        else:
            updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            updated = TrainState(step=state.step + 1, params=params, opt_state=opt_state,
                                 params_ema=optim.ema_update(state.params_ema, params, rate),
                                 model_state=model_state, key=state.key)
            new = optax.tree.where(finite, updated, held)
            lr = optim.current_learning_rate(opt_state)
        metrics = {"loss": loss, "grad_norm": grad_norm, "finite": finite, "lr": lr}
        return new, metrics


def make_train_step(loss_fn: LossFn, optimizer: optax.GradientTransformation, *, ema_rate: float,
                    ema_warmup: bool = False, nan_policy: str = "stop") -> TrainStep:
    """Pure train step `step(state, x) -> (state, metrics)`; metrics = {loss, grad_norm, lr, finite}.

    Args:
      loss_fn: `loss_fn(key, params, model_state, x) -> (loss, model_state)` (score_jax.losses).
      optimizer: an optax transformation (score_jax.optim.get_optimizer); `lr` is read from its
        injected 'learning_rate' hyperparameter (NaN if it has none).
      ema_rate: EMA decay of params_ema; with `ema_warmup`, min(rate, (1 + step) / (10 + step)).
      nan_policy: on a non-finite loss or gradient, 'skip' keeps params, opt_state, EMA and model
        state and advances `step`; 'stop' returns the input state unchanged. Both report
        finite=False; `grad_norm` is the norm before clipping. A skipped update does not advance
        the optimiser's own count, so a warm-up then lags `step` by the number of skipped steps.
    """
    if nan_policy not in NAN_POLICIES:
        raise InvalidInputError(f"nan_policy: unknown policy {nan_policy!r}; valid values are "
                                f"{list(NAN_POLICIES)}.")
    optim.ema_rate(0, ema_rate)  # validates the rate on the host
    return TrainStep(loss_fn, optimizer, float(ema_rate), bool(ema_warmup), nan_policy)


def make_multi_step(step: StepFn, n_jitted_steps: int) -> Callable[[TrainState, Array],
                                                                   tuple[TrainState, dict]]:
    """n steps in one `lax.scan`: (state, xs [n, B, ...]) -> (state, metrics stacked to [n]).

    With a 'stop' policy the state freezes at the first non-finite step and every later step of the
    call reports finite=False, as if the runner had stopped there.
    """
    if not isinstance(n_jitted_steps, int) or n_jitted_steps < 1:
        raise InvalidInputError(f"training.n_jitted_steps: expected a positive integer, got "
                                f"{n_jitted_steps!r}.")
    stop = getattr(step, "nan_policy", "skip") == "stop"

    def body(carry: tuple[TrainState, Array], x: Array) -> tuple[tuple[TrainState, Array], dict]:
        state, halted = carry
        new_state, metrics = step(state, x)
        finite = metrics["finite"] & ~halted
        if stop:
            new_state = optax.tree.where(finite, new_state, state)
            halted = ~finite
        return (new_state, halted), {**metrics, "finite": finite}

    def multi_step(state: TrainState, xs: Array) -> tuple[TrainState, dict]:
        if xs.ndim < 1 or xs.shape[0] != n_jitted_steps:
            raise InvalidInputError(f"x: expected a leading axis of n_jitted_steps={n_jitted_steps} "
                                    f"batches, got shape {xs.shape}.")
        (state, _), metrics = jax.lax.scan(body, (state, jnp.zeros([], bool)), xs)
        return state, metrics

    return multi_step


def default_n_jitted_steps(backend: Optional[str] = None) -> int:
    """Steps per compiled call when training.n_jitted_steps = 0: 1 on CPU, 5 elsewhere.

    On XLA:CPU convolution gradients inside a compiled loop run ~10x slower than as separate calls
    (DESIGN.md, jax-ml/jax#12868), so a scanned multi-step loses there; GPU and TPU gain from it.
    """
    backend = jax.default_backend() if backend is None else backend
    return 1 if backend.lower() == "cpu" else 5


def make_eval_step(loss_fn: LossFn) -> Callable[[TrainState, Array], dict]:
    """Evaluation loss with the EMA params: (state, x [B, ...]) -> {loss}; pass an eval loss_fn.

    Like the official `get_step_fn(train=False)`, nothing is updated; `loss_fn` should be built with
    `train=False`. The key is derived from (state.key, state.step) on a stream of its own.
    """

    def eval_step(state: TrainState, x: Array) -> dict:
        key = jax.random.fold_in(jax.random.fold_in(state.key, state.step), _EVAL_STREAM)
        loss, _ = loss_fn(key, state.params_ema, state.model_state, x)
        return {"loss": loss}

    return eval_step

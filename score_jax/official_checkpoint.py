"""Read a training checkpoint written by the official score_sde code (flax 0.3 msgpack of its `State`).

The official `run_lib.train` saves `flax.jax_utils.unreplicate(state)` with
`flax.training.checkpoints.save_checkpoint`, i.e. the msgpack bytes of the state dict

  step, optimizer{target, state{step, param_states{<params tree>{grad_ema, grad_sq_ema}}}},
  lr, model_state, ema_rate, params_ema, rng

where `target` is the parameter tree and `grad_ema` / `grad_sq_ema` are the first and second moments of
`flax.optim.Adam`. This module reads such a file with `flax.serialization.msgpack_restore` (no pickle),
checks its layout and, given a parameter template, every leaf path and shape; turning the result into a
score_jax train state is the runner's job.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping
from typing import Any, Optional, Union

import numpy as np

from score_jax import safe_files
from score_jax.errors import InvalidInputError, MissingFileError

PathLike = Union[str, pathlib.Path]
Tree = Any  # nested dicts of numpy arrays

_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)")
_STATE_KEYS = ("step", "optimizer", "lr", "model_state", "ema_rate", "params_ema", "rng")


@dataclasses.dataclass(frozen=True)
class OfficialCheckpoint:
    """The contents of an official score_sde training checkpoint, as numpy trees (nested dicts)."""

    step: int  # training steps taken (the official `state.step`)
    params: Tree  # optimizer.target: the parameter tree, official module names
    params_ema: Tree  # EMA of the parameters; the official sampler and evaluator use these
    model_state: Tree  # non-parameter collections (empty for NCSN++/DDPM++)
    adam_mu: Tree  # Adam first moments (flax.optim `grad_ema`), same tree as params
    adam_nu: Tree  # Adam second moments (flax.optim `grad_sq_ema`), same tree as params
    optimizer_step: int  # flax.optim's own step count, used for Adam's bias correction
    lr: float  # the learning rate the run was configured with
    ema_rate: float
    rng: np.ndarray  # uint32 [2]: the raw jax.random.PRNGKey of the run


def latest_checkpoint_file(directory: PathLike) -> pathlib.Path:
    """The file `checkpoint_<N>` with the largest N in `directory`, as flax's `latest_checkpoint` picks."""
    directory = pathlib.Path(directory)
    numbered = [(int(m.group(1)), p) for p in directory.iterdir()
                if p.is_file() and (m := _CHECKPOINT_NAME.fullmatch(p.name))]
    if not numbered:
        raise MissingFileError(f"checkpoint directory {str(directory)!r} holds no file named "
                               f"checkpoint_<N>; pass the checkpoint file itself or another directory.")
    return max(numbered)[1]


def flatten_tree(tree: Tree, prefix: str = "") -> dict[str, Any]:
    """Leaves of a nested mapping keyed by their '/'-joined path (an empty mapping has no leaves)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, path))
        else:
            flat[path] = value
    return flat


def check_tree_matches(tree: Tree, template: Tree, *, what: str,
                       against: str = "the model's parameters") -> None:
    """Raise ValueError at the first path (sorted) where `tree` and `template` differ in presence or shape.

    Leaves of `template` may be arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape` of a
    model init); only paths and shapes are compared.
    """
    got = {path: tuple(np.shape(leaf)) for path, leaf in flatten_tree(tree).items()}
    want = {path: tuple(getattr(leaf, "shape", np.shape(leaf)))
            for path, leaf in flatten_tree(template).items()}
    bad = sorted(path for path in set(got) | set(want) if got.get(path) != want.get(path))
    if not bad:
        return
    path, more = bad[0], f" ({len(bad) - 1} more mismatched paths)" if len(bad) > 1 else ""
    if path not in got:
        problem = f"lacks {path!r} (shape {want[path]} in {against})"
    elif path not in want:
        problem = f"has {path!r} (shape {got[path]}), which {against} lack"
    else:
        problem = f"has {path!r} with shape {got[path]}, {against} {want[path]}"
    raise InvalidInputError(f"{what} does not match {against}: it {problem}{more}. Was it trained with another "
                            f"config than the one given?")


def _restore_bytes(path: pathlib.Path) -> Tree:
    """The msgpack tree stored in `path`; a one-line ValueError when the bytes are not one."""
    tree = safe_files.read_msgpack(path, "official score_sde checkpoint")
    if not isinstance(tree, Mapping):
        raise InvalidInputError(f"{str(path)!r} holds a msgpack {type(tree).__name__}, not the state dict of a "
                                f"score_sde checkpoint.")
    return tree


def _get(tree: Mapping, key: str, where: str, path: pathlib.Path) -> Any:
    """tree[key], or a ValueError naming the missing key and the keys present."""
    if not isinstance(tree, Mapping) or key not in tree:
        present = sorted(map(str, tree)) if isinstance(tree, Mapping) else type(tree).__name__
        raise InvalidInputError(f"{str(path)!r} is not an official score_sde checkpoint: {where} lacks "
                                f"{key!r} (found {present}).")
    return tree[key]


def _split_moments(param_states: Tree, path: pathlib.Path, prefix: str = "") -> tuple[Tree, Tree]:
    """Split flax.optim Adam `param_states` ({..., leaf: {grad_ema, grad_sq_ema}}) into (mu, nu) trees."""
    if set(param_states) == {"grad_ema", "grad_sq_ema"} and not isinstance(param_states["grad_ema"], Mapping):
        return np.asarray(param_states["grad_ema"]), np.asarray(param_states["grad_sq_ema"])
    mu, nu = {}, {}
    for key, value in param_states.items():
        where = f"{prefix}/{key}" if prefix else key
        if not isinstance(value, Mapping):
            raise InvalidInputError(f"{str(path)!r}: optimizer param_states/{where} is a leaf, expected "
                                    f"{{grad_ema, grad_sq_ema}} (an Adam state of flax.optim).")
        mu[key], nu[key] = _split_moments(value, path, where)
    return mu, nu


def _as_numpy_tree(tree: Tree) -> Tree:
    """Nested plain dicts with numpy leaves."""
    return {k: _as_numpy_tree(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}


def load_official_checkpoint(path: PathLike, params_template: Optional[Tree] = None) -> OfficialCheckpoint:
    """Read an official score_sde checkpoint file, or the latest `checkpoint_<N>` of a directory.

    Args:
      path: a checkpoint file, or a directory of them (the largest N is read, as flax did).
      params_template: the model's parameter tree (arrays or `jax.ShapeDtypeStruct`s, e.g.
        `jax.eval_shape(model.init, ...)['params']`). When given, `params`, `params_ema` and both Adam
        moment trees must have exactly its paths and shapes.

    Returns:
      An `OfficialCheckpoint` of numpy trees.

    Raises:
      FileNotFoundError: no such file, or a directory without checkpoint files.
      ValueError: the bytes are not msgpack, the layout is not the official `State`, or a tree does not
        match `params_template` (the message names the first mismatched path in sorted order).
    """
    path = pathlib.Path(path)
    if not path.exists():
        raise MissingFileError(f"official checkpoint {str(path)!r} does not exist.")
    if path.is_dir():
        path = latest_checkpoint_file(path)
    # A damaged file can parse as msgpack and hold leaves of unexpected types; one line for it.
    with safe_files.reading(path, "official score_sde checkpoint"):
        state = _restore_bytes(path)
        for key in _STATE_KEYS:
            _get(state, key, "the state dict", path)
        optimizer = state["optimizer"]
        params = _get(optimizer, "target", "optimizer", path)
        opt_state = _get(optimizer, "state", "optimizer", path)
        param_states = _get(opt_state, "param_states", "optimizer/state", path)
        opt_step = _get(opt_state, "step", "optimizer/state", path)
        for name, tree in (("optimizer/target", params), ("params_ema", state["params_ema"]),
                           ("model_state", state["model_state"]), ("optimizer/state/param_states", param_states)):
            if not isinstance(tree, Mapping):
                raise InvalidInputError(f"{str(path)!r}: {name} is a {type(tree).__name__}, expected a tree of arrays.")
        mu, nu = _split_moments(param_states, path)
        target = "its optimizer/target"
        check_tree_matches(state["params_ema"], params, what=f"{str(path)!r}: params_ema", against=target)
        check_tree_matches(mu, params, what=f"{str(path)!r}: the Adam moments", against=target)
        if params_template is not None:
            check_tree_matches(params, params_template, what=f"checkpoint {str(path)!r}")
        rng = np.asarray(state["rng"])
        if rng.shape != (2,):
            raise InvalidInputError(f"{str(path)!r}: rng has shape {rng.shape}, expected a raw PRNGKey of shape (2,).")
        return OfficialCheckpoint(
            step=int(np.asarray(state["step"])), params=_as_numpy_tree(params),
            params_ema=_as_numpy_tree(state["params_ema"]), model_state=_as_numpy_tree(state["model_state"]),
            adam_mu=_as_numpy_tree(mu), adam_nu=_as_numpy_tree(nu), optimizer_step=int(np.asarray(opt_step)),
            lr=float(np.asarray(state["lr"])), ema_rate=float(np.asarray(state["ema_rate"])),
            rng=rng.astype(np.uint32))

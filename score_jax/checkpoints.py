"""Preemption-safe training checkpoints with orbax-checkpoint.

One `CheckpointManager` under `<workdir>/checkpoints`, one step directory per checkpoint, each with two
items: `state` (the training state as a flax state dict: step, params, optimiser state, EMA, key)
and `meta` (JSON: the step and the data iterator position). Two kinds of checkpoint share it:
  - preemption checkpoints every `preemption_every` steps, of which only the newest is kept;
  - snapshots every `snapshot_every` steps, all kept (the official `checkpoints/checkpoint_<n>`).
Orbax writes each checkpoint into a temporary directory and renames it when complete, and removes an
older checkpoint only after the newer one is complete, so a crash or a failed save never destroys a
complete checkpoint. A checkpoint that is complete but unreadable (truncated files) is reported and the
previous one is restored instead.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Callable, Optional

import flax.serialization
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import multihost
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp
from score_jax import paths, safe_files
from score_jax.errors import InvalidInputError

log = logging.getLogger(__name__)

# Listings of a checkpoint directory tried before a vanishing step is an error (open_manager).
_OPEN_ATTEMPTS = 20


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint: its step, the training state and the data-iterator position."""

    step: int
    state: Any
    data_state: Any  # JSON value, or None when the run saved no iterator position


def open_manager(directory: str | paths.Path, *, snapshot_every: int,
                 async_save: bool = True, read_only: bool = False,
                 this_process_only: bool = False) -> ocp.CheckpointManager:
    """A CheckpointManager that keeps the newest checkpoint and every multiple of `snapshot_every`.

    With `this_process_only` (reading only) the manager takes no part in orbax's cross-process
    barriers: each process of a multi-host evaluation reads on its own, so one that dies cannot
    leave the others in an XLA barrier for minutes (score_jax.coordination reports it instead).
    """
    if this_process_only and not read_only:
        raise InvalidInputError("open_manager: this_process_only is for reading only.")
    if snapshot_every < 1:
        raise InvalidInputError(f"training.snapshot_freq: expected a positive number of steps, "
                                f"got {snapshot_every}.")
    policy = pp.AnyPreservationPolicy([pp.LatestN(1), pp.EveryNSteps(snapshot_every)])
    options = ocp.CheckpointManagerOptions(
        preservation_policy=None if read_only else policy,
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
        # A killed run leaves its half-written temporary directory; never mistake it for a checkpoint.
        cleanup_tmp_directories=not read_only,
        multiprocessing_options=ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()})
        if this_process_only else ocp.options.MultiprocessingOptions())
    def manager() -> ocp.CheckpointManager:
        return ocp.CheckpointManager(paths.resolve(directory), options=options,
                                     item_names=("state", "meta"))

    # A training job running in the same workdir deletes each superseded checkpoint: a step that
    # orbax listed may be gone when it reads the step's metadata a moment later. Listing again
    # sees the directory as it is now.
    for _ in range(_OPEN_ATTEMPTS - 1):
        try:
            return manager()
        except (FileNotFoundError, NotADirectoryError):  # os.stat's, or orbax's own check's
            time.sleep(0.05)
    return manager()


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: Any = None) -> None:
    """Start writing a checkpoint of `state` (any flax-serialisable pytree) at `step`."""
    manager.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
        meta=ocp.args.JsonSave({"step": int(step), "data": data_state})))


def _abstract(target: Any, sharding: Any) -> Any:
    """ShapeDtypeStruct tree of the target's state dict, placed with `sharding` (None: as is)."""

    def one(x):
        s = sharding if sharding is not None else getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return jax.tree_util.tree_map(one, flax.serialization.to_state_dict(target))


def _restore_step(manager: ocp.CheckpointManager, step: int, target: Any,
                  sharding: Any) -> Restored:
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract(target, sharding)),
        meta=ocp.args.JsonRestore()))
    meta = out["meta"]
    if int(meta["step"]) != step:
        raise InvalidInputError(f"checkpoint {step}: its metadata names step {meta['step']}.")
    state = flax.serialization.from_state_dict(target, out["state"])
    return Restored(step=step, state=state, data_state=meta.get("data"))


def restore_latest(manager: ocp.CheckpointManager, target: Any, *, sharding: Any = None,
                   report: Callable[[str], None] = log.warning,
                   max_step: Optional[int] = None) -> Optional[Restored]:
    """Restore the newest readable checkpoint into the structure of `target`; None if there is none.

    Unreadable checkpoints (truncated or corrupt files) are reported through `report` and skipped,
    newest first, so a damaged latest checkpoint falls back to the previous one.
    """
    manager.reload()
    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
        if max_step is not None and step > max_step:
            continue
        try:
            return _restore_step(manager, step, target, sharding)
        except Exception as e:  # noqa: BLE001 - any read failure means "this checkpoint is damaged"
            moved = _set_aside(manager, step)
            report(f"checkpoint at step {step} in {manager.directory} is unreadable "
                   f"({type(e).__name__}: {str(e)[:200]}); moved to {moved}; trying the previous "
                   f"one.")
    return None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> paths.Path:
    """Move a damaged checkpoint out of the manager's directory (kept for inspection, not deleted).

    Otherwise the resumed run could not write a new checkpoint at that step.
    """
    src = paths.resolve(manager.directory) / str(step)
    dst = src.parent.with_name(src.parent.name + "-damaged") / f"{step}-{int(time.time())}"
    if jax.process_index() == 0:
        paths.make_dir(dst.parent)
        src.rename(dst)  # on a bucket a copy and delete per object: rare, and only of a damaged one
    multihost.sync_global_processes(f"set_aside_{step}")
    manager.reload()
    return dst


def restore_step(manager: ocp.CheckpointManager, step: int, target: Any, *,
                 sharding: Any = None) -> Restored:
    """Restore the checkpoint at exactly `step` (evaluation); raises if it is missing or damaged."""
    return _restore_step(manager, step, target, sharding)


def snapshot_steps(directory: str | paths.Path) -> list[int]:
    """Steps of the complete checkpoints under `directory`, ascending ([] if none)."""
    path = paths.resolve(directory)
    if not path.is_dir():
        return []
    return sorted(ocp.utils.checkpoint_steps(path))


def restore_as_saved(manager: ocp.CheckpointManager, step: int) -> tuple[Any, Any]:
    """(state dict of numpy-backed arrays on this process's first device, meta) at `step`.

    For inspection and tools: needs no training-state template, and works whatever the device
    topology of the run that wrote the checkpoint.
    """
    device = jax.local_devices()[0]
    path = paths.resolve(manager.directory) / str(step)
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(path / "state")
        tree = getattr(metadata, "item_metadata", metadata)
        tree = getattr(tree, "tree", tree)
        abstract = jax.tree_util.tree_map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                           sharding=jax.sharding.SingleDeviceSharding(device)),
            tree)
        state = checkpointer.restore(path / "state", abstract)
    # The meta item is the plain JSON file the JsonCheckpointHandler wrote.
    meta_file = path / "meta" / "metadata"
    with safe_files.reading(meta_file, "checkpoint metadata"):
        return state, json.loads(meta_file.read_text())

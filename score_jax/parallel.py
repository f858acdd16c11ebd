"""Data parallelism over a device mesh, and multi-host set-up through `jax.distributed`.

One mesh axis, 'data': every device holds a replica of the parameters and a slice of the global
batch. Each process loads only its share of the global batch; `global_batch` stitches the shares
into one `jax.Array` sharded along the batch axis, so the maths is written for one global batch.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from score_jax.errors import InvalidInputError

DATA_AXIS = "data"
# Seconds without a heartbeat after which the job's coordination service declares a process dead
# (JAX's default is 100). A killed process is seen at once (its connections reset); this bounds
# the wait when a host vanishes without a word.
HEARTBEAT_TIMEOUT_S = 45


def initialize_distributed(coordinator_address: Optional[str], num_processes: Optional[int],
                           process_id: Optional[int]) -> None:
    """Join a multi-host job; must run before any other JAX call. No-op for a single process.

    On Cloud TPU the three arguments may all be None: JAX detects the cluster itself, which the
    caller requests by passing `coordinator_address='auto'`.
    """
    if coordinator_address is None and num_processes in (None, 1):
        return
    if coordinator_address == "auto":
        jax.distributed.initialize()
        return
    if coordinator_address is None or num_processes is None or process_id is None:
        raise InvalidInputError(
            "multi-host flags: --coordinator_address, --num_processes and --process_id must be given "
            f"together, got coordinator_address={coordinator_address!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}.")
    if not 0 <= process_id < num_processes:
        raise InvalidInputError(f"process_id: expected 0 <= process_id < num_processes={num_processes}, "
                                f"got {process_id}.")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)


def make_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A one-axis ('data') mesh over `devices` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a global batch: leading axis split over the 'data' axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of a fully replicated value (parameters, optimiser state, keys)."""
    return NamedSharding(mesh, P())


def is_main_process() -> bool:
    """True on the process that writes logs, images and summaries."""
    return jax.process_index() == 0


def local_batch_size(global_batch_size: int, mesh: Mesh, name: str = "batch_size") -> int:
    """Per-process share of a global batch; raises if the batch does not split over the devices."""
    n_dev = mesh.devices.size
    if global_batch_size % n_dev:
        raise InvalidInputError(
            f"{name}: the global batch size {global_batch_size} must be a multiple of the "
            f"{n_dev} devices of the mesh; choose a multiple of {n_dev}.")
    return global_batch_size // jax.process_count()


def global_batch(local: Any, mesh: Mesh, batch_axis: int = 0) -> Any:
    """Assemble a global batch (pytree; `batch_axis` = batch) from this process's share of it."""
    spec = P(*([None] * batch_axis), DATA_AXIS)
    sharding = NamedSharding(mesh, spec)

    def one(x):
        x = np.asarray(x)
        shape = list(x.shape)
        shape[batch_axis] *= jax.process_count()
        return jax.make_array_from_process_local_data(sharding, x, tuple(shape))

    return jax.tree_util.tree_map(one, local)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a host pytree (identical on every process) on every device of the mesh."""
    sharding = replicated(mesh)

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(one, tree)


def to_host(tree: Any) -> Any:
    """Copy a pytree of (possibly multi-host, sharded) arrays to numpy on every process."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.sharding.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)


def sync(name: str) -> None:
    """Barrier across processes (no-op for one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def params_digest(params: Any) -> str:
    """sha256 of this process's replica of a pytree (to check that replicas agree across hosts)."""
    import hashlib
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        h.update(np.ascontiguousarray(np.asarray(leaf.addressable_data(0))).tobytes())
    return h.hexdigest()

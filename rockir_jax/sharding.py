"""Meshes and placement: the one place that decides how devices are arranged and arrays are split.

Every sharded computation (train, evaluate, embed, search) uses a mesh from :func:`make_mesh`; the
global batch is split along :data:`DATA_AXIS` and everything else is replicated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices), axis ``data``."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def data_parallel_devices(
    devices: Sequence[jax.Device], global_batch_size: int, requested: int = 0
) -> list[jax.Device]:
    """The devices a training mesh uses: the first ``requested``, or with 0 the most that split the batch.

    With ``requested=0`` a single-process run takes the largest count, at most ``len(devices)``, that
    divides ``global_batch_size`` (one CPU device per core on a 6-core host still trains a batch of 16,
    on 4 devices); a multi-process run takes every device, since whole hosts cannot be left out.
    """
    devices = list(devices)
    if requested:
        return devices[:requested]
    if jax.process_count() > 1:
        return devices
    count = max(n for n in range(1, len(devices) + 1) if global_batch_size % n == 0)
    return devices[:count]


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a pytree on every device of ``mesh``."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def replicated_targets(tree: Any, mesh: Mesh) -> Any:
    """Restore targets for ``tree``'s arrays: its shapes and dtypes, replicated on ``mesh``.

    orbax restores onto these shardings instead of the ones recorded at save time, so a checkpoint
    written on other devices (another count, platform or number of processes) restores here; each
    process reads only what its own devices hold.
    """
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf), jnp.result_type(leaf), sharding=replicated),
        tree,
    )


def host_restore_args(metadata: Any) -> Any:
    """orbax restore arguments that read every array of a checkpoint's ``metadata`` tree as numpy on
    the host, whatever devices wrote it."""
    return jax.tree.map(lambda leaf: ocp.RestoreArgs(restore_type=np.ndarray, dtype=leaf.dtype), metadata)


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles this process's share of a global batch into arrays split along ``data``."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return {
        key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for key, value in batch.items()
    }


def check_divisible(global_batch_size: int, mesh: Mesh) -> None:
    """Raises a clear error when the global batch cannot be split evenly over the devices."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(
            f"global_batch_size={global_batch_size} does not divide evenly over {devices} devices; "
            f"use a multiple of {devices}"
        )

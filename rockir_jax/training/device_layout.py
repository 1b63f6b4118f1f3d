"""How a training run spreads over its devices: data parallel, or the DSNN's branch parallelism.

:func:`plan` picks the devices (:func:`rockir_jax.sharding.data_parallel_devices`) and the layout; the
:class:`Layout` places the train state, builds the matching train step and converts states back to the
model's own layout for checkpoints and validation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rockir_jax import sharding
from rockir_jax.sharding import DATA_AXIS
from rockir_jax.training import step as step_lib
from rockir_jax.training.dsnn_branch_parallel import (
    BRANCH_AXIS,
    make_branch_train_step,
    stack_backbones,
    state_shardings,
    unstack_backbones,
)
from rockir_jax.training.step import LossFn, TrainState


@dataclasses.dataclass(frozen=True)
class Layout:
    """A training run's devices and how the train state lies on them.

    Attributes:
      mesh: the train step's mesh (``data``, or ``data`` × ``branch``).
      data_mesh: a 1-D ``data`` mesh over the same devices, for validation and embedding.
      branch_parallel: whether the DSNN's backbones are split over ``branch``.
    """

    mesh: Mesh
    data_mesh: Mesh
    branch_parallel: bool

    def describe(self) -> str:
        devices = self.mesh.devices.size
        if self.branch_parallel:
            return f"{devices} devices, branch parallel: each backbone on {devices // 2} of them"
        return f"{devices} devices, data parallel"

    def place(self, state: TrainState) -> TrainState:
        """A state in the model's layout (host arrays, or replicated on :attr:`data_mesh`) → the training
        layout, on the mesh.

        A jitted computation with output shardings moves the arrays, not ``jax.device_put``: each
        process then only writes its own devices, as a multi-process run needs.
        """
        if not self.branch_parallel:
            return jax.jit(lambda state: state, out_shardings=NamedSharding(self.mesh, P()))(state)
        target = jax.eval_shape(stack_backbones, state)
        return jax.jit(stack_backbones, out_shardings=state_shardings(target, self.mesh))(state)

    def canonical(self, state: TrainState) -> TrainState:
        """A training-layout state → the model's layout, replicated on :attr:`data_mesh`."""
        if not self.branch_parallel:
            return state
        return jax.jit(unstack_backbones, out_shardings=NamedSharding(self.data_mesh, P()))(state)

    def train_step(self, model: nn.Module, loss_fn: LossFn):
        """The jitted train step for states from :meth:`place`."""
        if self.branch_parallel:
            return make_branch_train_step(self.mesh, model, loss_fn)
        return step_lib.make_train_step(self.mesh, loss_fn)

    def shard_batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """A global batch split over ``data`` (and repeated over ``branch``)."""
        return sharding.shard_batch(batch, self.mesh)


def plan(
    devices: Sequence[jax.Device],
    global_batch_size: int,
    *,
    requested: int = 0,
    branch_parallel: bool = False,
) -> Layout:
    """The layout of a run: which devices (see :func:`rockir_jax.sharding.data_parallel_devices`) and how.

    Branch parallelism needs an even device count; with an odd one (a single device, say) the run is
    data parallel. ``requested`` devices are taken as they are.
    """
    chosen = sharding.data_parallel_devices(devices, global_batch_size, requested)
    data_mesh = sharding.make_mesh(chosen)
    sharding.check_divisible(global_batch_size, data_mesh)
    if branch_parallel and len(chosen) % 2 == 0:
        branch_mesh = Mesh(
            np.asarray(chosen).reshape(-1, 2),
            (DATA_AXIS, BRANCH_AXIS),
            axis_types=(jax.sharding.AxisType.Auto,) * 2,
        )
        return Layout(branch_mesh, data_mesh, branch_parallel=True)
    return Layout(data_mesh, data_mesh, branch_parallel=False)

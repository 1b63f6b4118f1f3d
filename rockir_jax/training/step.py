"""Sharded steps: train and evaluate, each one ``jax.jit`` of a ``jax.shard_map`` over ``data``.

The global batch is split over the 1-D device mesh axis ``data``; parameters, optimiser state and
BatchNorm statistics are replicated. Inside the map each device runs the model on its share; BatchNorm
averages its batch statistics over ``data`` (the original's SyncBatchNorm), and gradients and metrics are
``pmean``-ed, so one step on N devices computes what one step on one device computes over the same
global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from rockir_jax.sharding import DATA_AXIS

LossFn = Callable[[Mapping[str, jnp.ndarray], Mapping[str, jnp.ndarray]], tuple[jnp.ndarray, dict]]


def ema_rate(decay: float, step: jnp.ndarray) -> jnp.ndarray:
    """The moving average's decay after ``step`` updates: ``min(decay, (1 + step) / (10 + step))``, so that
    the first steps do not leave the average tied to the initial parameters."""
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


class TrainState(train_state.TrainState):
    """flax's TrainState plus BatchNorm running statistics and, with ``ema_decay`` > 0, an exponential
    moving average of the parameters (``ema_params``) that validation and exported models use."""

    batch_stats: Any = None
    ema_params: Any = None
    ema_decay: float = struct.field(pytree_node=False, default=0.0)

    def apply_gradients(self, *, grads: Any, **kwargs: Any) -> TrainState:
        """One optimiser step, then the moving average moves towards the new parameters."""
        state = super().apply_gradients(grads=grads, **kwargs)
        if state.ema_params is None:
            return state
        keep = ema_rate(self.ema_decay, state.step)
        ema = jax.tree.map(lambda e, p: keep * e + (1.0 - keep) * p, state.ema_params, state.params)
        return state.replace(ema_params=ema)

    def eval_params(self) -> Any:
        """The parameters to evaluate: the moving average when kept, else the current ones."""
        return self.params if self.ema_params is None else self.ema_params


def init_variables(model: nn.Module, rng: jax.Array, image_size: int) -> dict[str, Any]:
    """Initial ``{"params", "batch_stats"}`` of a pair model (DSNN or Siamese)."""
    image = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return jax.jit(lambda rng: model.init(rng, image, image, train=False))(rng)


def create_train_state(
    model: nn.Module,
    variables: Mapping[str, Any],
    tx: optax.GradientTransformation,
    ema_decay: float = 0.0,
) -> TrainState:
    """A fresh train state (step 0, new optimiser state) around ``variables``; with ``ema_decay`` in
    (0, 1) it also keeps a moving average of the parameters, starting from them."""
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay={ema_decay}: must be in [0, 1) (0: no moving average)")
    params = variables["params"]
    return TrainState.create(
        apply_fn=model.apply,
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
        ema_params=jax.tree.map(jnp.array, params) if ema_decay > 0 else None,
        ema_decay=ema_decay,
    )


def make_train_step(
    mesh: Mesh, loss_fn: LossFn
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict]]:
    """``train_step(state, batch) -> (state, metrics)``; ``state`` is donated.

    ``batch`` holds ``image0``, ``image1`` and the loss's labels, split along ``data``; the model must be
    built with ``axis_name="data"`` for cross-device BatchNorm.
    """

    def per_device(state: TrainState, batch):
        def compute_loss(params):
            outputs, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats},
                batch["image0"],
                batch["image1"],
                train=True,
                mutable=["batch_stats"],
            )
            loss, terms = loss_fn(outputs, batch)
            return loss, (terms, updates["batch_stats"])

        grads, (terms, batch_stats) = jax.grad(compute_loss, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, DATA_AXIS)
        terms = jax.lax.pmean(terms, DATA_AXIS)
        terms["grad_norm"] = optax.tree.norm(grads)
        return state.apply_gradients(grads=grads, batch_stats=batch_stats), terms

    sharded = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=(P(), P()), check_vma=False
    )
    return jax.jit(sharded, donate_argnums=0)


def make_eval_step(mesh: Mesh, loss_fn: LossFn) -> Callable[[TrainState, Mapping[str, jax.Array]], dict]:
    """``eval_step(state, batch) -> metrics``: the loss terms with running BatchNorm statistics (and the
    moving average of the parameters when kept)."""

    def per_device(state: TrainState, batch):
        outputs = state.apply_fn(
            {"params": state.eval_params(), "batch_stats": state.batch_stats},
            batch["image0"],
            batch["image1"],
            train=False,
        )
        return jax.lax.pmean(loss_fn(outputs, batch)[1], DATA_AXIS)

    sharded = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(), check_vma=False
    )
    return jax.jit(sharded)

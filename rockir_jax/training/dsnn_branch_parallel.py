"""The DSNN's branch parallelism: each backbone trained on its own half of the devices.

On a ``data`` × ``branch`` mesh of shape (N/2, 2), branch 0 trains the image backbone and branch 1 the
rock backbone; only the feature maps cross branches, and each backbone's parameters and optimiser state
live on its branch alone, so no gradient all-reduce over ``branch`` is needed. The step computes what the
data-parallel step (:mod:`rockir_jax.training.step`) computes. The backbones are stacked under
``"backbones"`` here; :class:`rockir_jax.training.device_layout.Layout` converts. Details: docs/internals.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rockir_jax.models.dsnn import backbone_features
from rockir_jax.sharding import DATA_AXIS
from rockir_jax.training.step import LossFn, TrainState

BRANCH_AXIS = "branch"
STACKED = "backbones"
BRANCHES = ("image_backbone", "rock_backbone")


def _has_branches(node: Any) -> bool:
    return isinstance(node, Mapping) and all(name in node for name in BRANCHES)


def _is_stacked(node: Any) -> bool:
    return isinstance(node, Mapping) and STACKED in node


def stack_backbones(tree: Any) -> Any:
    """Every ``{image_backbone, rock_backbone, ...}`` dict in ``tree`` → ``{backbones: stacked, ...}``."""

    def stack(node):
        if not _has_branches(node):
            return node
        rest = {key: value for key, value in node.items() if key not in BRANCHES}
        branches = [node[name] for name in BRANCHES]
        return {STACKED: jax.tree.map(lambda *leaves: jnp.stack(leaves), *branches), **rest}

    return jax.tree.map(stack, tree, is_leaf=_has_branches)


def unstack_backbones(tree: Any) -> Any:
    """The inverse of :func:`stack_backbones`: the model's own layout."""

    def unstack(node):
        if not _is_stacked(node):
            return node
        rest = {key: value for key, value in node.items() if key != STACKED}
        branches = {
            name: jax.tree.map(lambda leaf, i=i: leaf[i], node[STACKED]) for i, name in enumerate(BRANCHES)
        }
        return {**branches, **rest}

    return jax.tree.map(unstack, tree, is_leaf=_is_stacked)


def state_shardings(tree: Any, mesh: Mesh) -> Any:
    """Shardings of a branch-layout tree: stacked leaves split over ``branch``, the rest replicated."""

    def sharding(path, _):
        stacked = any(getattr(key, "key", None) == STACKED for key in path)
        return NamedSharding(mesh, P(BRANCH_AXIS) if stacked else P())

    return jax.tree_util.tree_map_with_path(sharding, tree)


def _squared_norm(tree: Any) -> jnp.ndarray:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def make_branch_train_step(
    mesh: Mesh, model: nn.Module, loss_fn: LossFn
) -> Callable[[TrainState, Mapping[str, jax.Array]], tuple[TrainState, dict]]:
    """``train_step(state, batch) -> (state, metrics)`` for a DSNN state in the branch layout (donated)."""
    backbone = model.backbone_module()
    branches = mesh.shape[BRANCH_AXIS]

    def per_device(state: TrainState, batch):
        own_params = jax.tree.map(lambda leaf: leaf[0], state.params[STACKED])
        own_stats = jax.tree.map(lambda leaf: leaf[0], state.batch_stats[STACKED])
        head_params = {key: value for key, value in state.params.items() if key != STACKED}

        def compute_loss(own_params, head_params):
            features, stats = [], own_stats
            # Image 0 then image 1, each updating the running statistics, as the DSNN does.
            for images in (batch["image0"], batch["image1"]):
                feature_map, updates = backbone.apply(
                    {"params": own_params, "batch_stats": stats},
                    images,
                    train=True,
                    method=backbone_features,
                    mutable=["batch_stats"],
                )
                features.append(feature_map)
                stats = updates["batch_stats"]
            # (branch, image, ...) = (h1, h2) from the image backbone, (h3, h4) from the rock backbone.
            gathered = jax.lax.all_gather(jnp.stack(features), BRANCH_AXIS)
            outputs = model.apply(
                {"params": head_params}, *gathered.reshape(-1, *gathered.shape[2:]), method=model.heads
            )
            loss, terms = loss_fn(outputs, batch)
            # Every branch computes the same loss; the all-gather's transpose sums the branches'
            # feature gradients, so each counts 1/branches of it.
            return loss / branches, (terms, stats)

        (own_grads, head_grads), (terms, own_stats) = jax.grad(compute_loss, argnums=(0, 1), has_aux=True)(
            own_params, head_params
        )
        head_grads = jax.lax.psum(head_grads, BRANCH_AXIS)
        own_grads = jax.lax.pmean(own_grads, DATA_AXIS)
        head_grads = jax.lax.pmean(head_grads, DATA_AXIS)
        terms = jax.lax.pmean(terms, DATA_AXIS)
        terms["grad_norm"] = jnp.sqrt(
            jax.lax.psum(_squared_norm(own_grads), BRANCH_AXIS) + _squared_norm(head_grads)
        )
        add_branch_axis = lambda tree: jax.tree.map(lambda leaf: leaf[None], tree)
        grads = {STACKED: add_branch_axis(own_grads), **head_grads}
        batch_stats = {**state.batch_stats, STACKED: add_branch_axis(own_stats)}
        return state.apply_gradients(grads=grads, batch_stats=batch_stats), terms

    def specs(state: TrainState) -> Any:
        return jax.tree.map(lambda sharding: sharding.spec, state_shardings(state, mesh))

    def train_step(state: TrainState, batch: Mapping[str, jax.Array]):
        sharded = jax.shard_map(
            per_device,
            mesh=mesh,
            in_specs=(specs(state), P(DATA_AXIS)),
            out_specs=(specs(state), P()),
            check_vma=False,
        )
        return sharded(state, batch)

    return jax.jit(train_step, donate_argnums=0)

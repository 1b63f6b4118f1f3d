"""Losses with torch's semantics: the DSNN's composite loss and the Siamese baseline's BCE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp

DSNN_LOSS_WEIGHTS = {"fused": 1.0, "image": 1.0, "metadata": 1.0, "regression": 10.0}
"""The original's weights of the DSNN loss terms, by term."""


def binary_cross_entropy(probabilities: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Mean BCE on probabilities, logs clamped at -100 as ``torch.nn.BCELoss`` does."""
    log_p = jnp.maximum(jnp.log(probabilities), -100.0)
    log_not_p = jnp.maximum(jnp.log1p(-probabilities), -100.0)
    return -jnp.mean(targets * log_p + (1.0 - targets) * log_not_p)


def smooth_l1(predictions: jnp.ndarray, targets: jnp.ndarray, beta: float = 1.0) -> jnp.ndarray:
    """Mean smooth-L1 (Huber / beta) as ``torch.nn.SmoothL1Loss(beta=1)``."""
    diff = jnp.abs(predictions - targets)
    return jnp.mean(jnp.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta))


def dsnn_loss(
    outputs: Mapping[str, jnp.ndarray],
    batch: Mapping[str, jnp.ndarray],
    weights: Mapping[str, float] = DSNN_LOSS_WEIGHTS,
    target_scale: Sequence[float] | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """``fused·BCE(p, same_sample·same_meta) + image·BCE(p_img, same_sample) + metadata·BCE(p_rock,
    same_meta) + regression·(SmoothL1(reg0, targets0) + SmoothL1(reg1, targets1))``, the weights by
    name (:data:`DSNN_LOSS_WEIGHTS`); returns the loss and its terms.

    ``target_scale`` (one per target, e.g. the training split's standard deviations) divides each
    target's error before the SmoothL1, so that every target weighs alike whatever its units; the
    original has none (all 1).
    """
    if set(weights) != set(DSNN_LOSS_WEIGHTS):
        raise ValueError(f"loss weights must name {sorted(DSNN_LOSS_WEIGHTS)}, got {sorted(weights)}")
    scale = 1.0 if target_scale is None else jnp.asarray(target_scale, jnp.float32)
    regression = lambda i: smooth_l1(outputs[f"reg{i}"] / scale, batch[f"targets{i}"] / scale)
    same_sample, same_meta = batch["same_sample"], batch["same_meta"]
    terms = {
        "loss_fused": binary_cross_entropy(outputs["p"], same_sample * same_meta),
        "loss_image": binary_cross_entropy(outputs["p_img"], same_sample),
        "loss_metadata": binary_cross_entropy(outputs["p_rock"], same_meta),
        "loss_regression": regression(0) + regression(1),
    }
    loss = sum(weights[name.removeprefix("loss_")] * term for name, term in terms.items())
    return loss, {"loss": loss, **terms}


def siamese_loss(
    outputs: Mapping[str, jnp.ndarray], batch: Mapping[str, jnp.ndarray]
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """BCE of the pair similarity against same-sample, the Siamese baselines' loss."""
    loss = binary_cross_entropy(outputs["p"], batch["same_sample"])
    return loss, {"loss": loss}

"""Losses with torch's semantics: the DSNN's composite loss and the Siamese baseline's BCE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp

DSNN_LOSS_WEIGHTS = (1.0, 1.0, 1.0, 10.0)  # fused, image, metadata, regression


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
    weights: Sequence[float] = DSNN_LOSS_WEIGHTS,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """``w0·BCE(p, same_sample·same_meta) + w1·BCE(p_img, same_sample) + w2·BCE(p_rock, same_meta)
    + w3·(SmoothL1(reg0, targets0) + SmoothL1(reg1, targets1))``; returns the loss and its terms."""
    same_sample, same_meta = batch["same_sample"], batch["same_meta"]
    terms = {
        "loss_fused": binary_cross_entropy(outputs["p"], same_sample * same_meta),
        "loss_image": binary_cross_entropy(outputs["p_img"], same_sample),
        "loss_metadata": binary_cross_entropy(outputs["p_rock"], same_meta),
        "loss_regression": smooth_l1(outputs["reg0"], batch["targets0"])
        + smooth_l1(outputs["reg1"], batch["targets1"]),
    }
    loss = sum(w * term for w, term in zip(weights, terms.values(), strict=True))
    return loss, {"loss": loss, **terms}


def siamese_loss(
    outputs: Mapping[str, jnp.ndarray], batch: Mapping[str, jnp.ndarray]
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """BCE of the pair similarity against same-sample, the Siamese baselines' loss."""
    loss = binary_cross_entropy(outputs["p"], batch["same_sample"])
    return loss, {"loss": loss}

"""Losses with torch's semantics: the DSNN's composite loss and the Siamese baseline's BCE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

DSNN_LOSS_WEIGHTS = {"fused": 1.0, "image": 1.0, "metadata": 1.0, "regression": 10.0}
"""The original's weights of the DSNN loss terms, by term."""
OPTIONAL_LOSS_WEIGHTS = {"embedding": 0.0}
"""Terms the original does not have, off unless weighted."""


def binary_cross_entropy(probabilities: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Mean BCE on probabilities, logs clamped at -100 as ``torch.nn.BCELoss`` does."""
    log_p = jnp.maximum(jnp.log(probabilities), -100.0)
    log_not_p = jnp.maximum(jnp.log1p(-probabilities), -100.0)
    return -jnp.mean(targets * log_p + (1.0 - targets) * log_not_p)


def smooth_l1(predictions: jnp.ndarray, targets: jnp.ndarray, beta: float = 1.0) -> jnp.ndarray:
    """Mean smooth-L1 (Huber / beta) as ``torch.nn.SmoothL1Loss(beta=1)``."""
    diff = jnp.abs(predictions - targets)
    return jnp.mean(jnp.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta))


def supervised_contrastive(
    embeddings: jnp.ndarray, labels: jnp.ndarray, temperature: float, axis_name: str | None = None
) -> jnp.ndarray:
    """Supervised contrastive loss (Khosla et al. 2020) of unit ``embeddings`` ``(n, d)``: each one is
    pulled towards the others with its label and pushed from the rest, over the whole global batch.

    With ``axis_name`` (inside ``shard_map``) the embeddings of every device are gathered and each
    device scores its own anchors, so N devices compute what one does. An anchor without a positive
    counts 0.
    """
    everyone, all_labels, offset = embeddings, labels, 0
    if axis_name is not None:
        everyone = jax.lax.all_gather(embeddings, axis_name, tiled=True)
        all_labels = jax.lax.all_gather(labels, axis_name, tiled=True)
        offset = jax.lax.axis_index(axis_name) * embeddings.shape[0]
    logits = embeddings @ everyone.T / temperature
    is_self = jnp.arange(everyone.shape[0])[None, :] == (offset + jnp.arange(embeddings.shape[0]))[:, None]
    log_prob = logits - jax.nn.logsumexp(jnp.where(is_self, -jnp.inf, logits), axis=1, keepdims=True)
    positive = (labels[:, None] == all_labels[None, :]) & ~is_self
    count = positive.sum(axis=1)
    per_anchor = -jnp.where(positive, log_prob, 0.0).sum(axis=1) / jnp.maximum(count, 1)
    return jnp.mean(per_anchor)


def dsnn_loss(
    outputs: Mapping[str, jnp.ndarray],
    batch: Mapping[str, jnp.ndarray],
    weights: Mapping[str, float] = DSNN_LOSS_WEIGHTS,
    target_scale: Sequence[float] | None = None,
    temperature: float = 0.1,
    axis_name: str | None = None,
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """``fused·BCE(p, same_sample·same_meta) + image·BCE(p_img, same_sample) + metadata·BCE(p_rock,
    same_meta) + regression·(SmoothL1(reg0, targets0) + SmoothL1(reg1, targets1))``, the weights by
    name (:data:`DSNN_LOSS_WEIGHTS`); returns the loss and its terms.

    ``target_scale`` (one per target, e.g. the training split's standard deviations) divides each
    target's error before the SmoothL1, so that every target weighs alike whatever its units; the
    original has none (all 1). A non-zero ``embedding`` weight adds :func:`supervised_contrastive` on
    the retrieval embeddings of both images of every pair, reservoirs as labels, at ``temperature``
    (gathered over ``axis_name``).
    """
    if not set(DSNN_LOSS_WEIGHTS) <= set(weights) <= set(DSNN_LOSS_WEIGHTS) | set(OPTIONAL_LOSS_WEIGHTS):
        raise ValueError(
            f"loss weights must name {sorted(DSNN_LOSS_WEIGHTS)} "
            f"(optionally {sorted(OPTIONAL_LOSS_WEIGHTS)}), got {sorted(weights)}"
        )
    scale = 1.0 if target_scale is None else jnp.asarray(target_scale, jnp.float32)
    regression = lambda i: smooth_l1(outputs[f"reg{i}"] / scale, batch[f"targets{i}"] / scale)
    same_sample, same_meta = batch["same_sample"], batch["same_meta"]
    terms = {
        "loss_fused": binary_cross_entropy(outputs["p"], same_sample * same_meta),
        "loss_image": binary_cross_entropy(outputs["p_img"], same_sample),
        "loss_metadata": binary_cross_entropy(outputs["p_rock"], same_meta),
        "loss_regression": regression(0) + regression(1),
    }
    if weights.get("embedding", 0.0):
        embeddings = jnp.concatenate([outputs["embedding0"], outputs["embedding1"]])
        labels = jnp.concatenate([batch["reservoir0"], batch["reservoir1"]])
        terms["loss_embedding"] = supervised_contrastive(embeddings, labels, temperature, axis_name)
    loss = sum(weights[name.removeprefix("loss_")] * term for name, term in terms.items())
    return loss, {"loss": loss, **terms}


def siamese_loss(
    outputs: Mapping[str, jnp.ndarray], batch: Mapping[str, jnp.ndarray]
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """BCE of the pair similarity against same-sample, the Siamese baselines' loss."""
    loss = binary_cross_entropy(outputs["p"], batch["same_sample"])
    return loss, {"loss": loss}

"""The DSNN's heads, on NHWC backbone feature maps, with the original RockIR's exact math.

Submodule names follow the original PyTorch modules (``fc_out_image``, ``fc_fusion2``, ``out_por`` …) so
its checkpoints port with a table (:func:`rockir_jax.models.resnet_params.import_rockir_heads`); every
layer is initialised as torch's ``nn.Linear`` (:mod:`rockir_jax.models.torch_init`).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from rockir_jax.models import torch_init


def mean_abs_difference(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """``mean_hw(|a - b|)``: ``(N, H, W, C)`` pairs → ``(N, C)``."""
    return jnp.mean(jnp.abs(a - b), axis=(1, 2))


class GatedSiameseHead(nn.Module):
    """Image, metadata and gated fused similarity of two pairs of feature maps.

    ``h1``/``h2`` come from the image backbone, ``h3``/``h4`` from the rock backbone, for images 0/1.
    Returns ``(p, p_img, p_rock)``, each ``(N, 1)`` probabilities.
    """

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(
        self, h1: jnp.ndarray, h2: jnp.ndarray, h3: jnp.ndarray, h4: jnp.ndarray
    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
        dense = lambda features, x, name: torch_init.dense(features, x.shape[-1], name, self.dtype)(x)
        w1 = mean_abs_difference(h1, h2)
        w2 = mean_abs_difference(h3, h4)
        p_img = nn.sigmoid(dense(1, w1, "fc_out_image"))
        p_rock = nn.sigmoid(dense(1, w2, "fc_out_rock"))
        g = nn.relu(dense(32, jnp.concatenate([w1, w2], axis=-1), "fc_fusion"))
        g = nn.relu(dense(16, g, "fc_fusion2"))
        # The original applies ReLU before the softmax gate; kept so its checkpoints behave the same.
        g = nn.relu(dense(2, g, "fc_fusion3"))
        gate = nn.softmax(g, axis=-1)
        fused = (w1 * gate[:, 0:1] + w2 * gate[:, 1:2]) / 2
        p = nn.sigmoid(dense(1, fused, "fc_out"))
        return p, p_img, p_rock


class RegressionHead(nn.Module):
    """Predicts ``(porosity, scaled log-permeability[, extra targets])`` from a rock feature map."""

    num_extra_targets: int = 0
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
        dense = lambda features, x, name: torch_init.dense(features, x.shape[-1], name, self.dtype)(x)
        x = jnp.mean(h, axis=(1, 2))
        x = nn.relu(dense(64, x, "fc"))
        outputs = [dense(1, x, "out_por"), dense(1, x, "out_perm")]
        if self.num_extra_targets:
            outputs.append(dense(self.num_extra_targets, x, "out_extra"))
        return jnp.concatenate(outputs, axis=-1)


class SiameseHead(nn.Module):
    """The plain Siamese baseline: ``sigmoid(Dense(mean_hw|h1 - h2|))``, ``(N, 1)``."""

    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, h1: jnp.ndarray, h2: jnp.ndarray) -> jnp.ndarray:
        w = mean_abs_difference(h1, h2)
        return nn.sigmoid(torch_init.dense(1, w.shape[-1], "fc_out", self.dtype)(w))

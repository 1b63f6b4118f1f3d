"""Full networks: the Double Siamese Network and the baselines it is compared with.

Every network has ``__call__(image0, image1, train)`` returning a dict of outputs for the loss, and
``embed(images)`` returning the retrieval embedding (and, for the DSNN, the regression prediction).
Backbones run once per image batch, as in the original, so BatchNorm sees image 0's and image 1's
batches separately and updates its running statistics twice per step, as torch did.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from rockir_jax.models.heads import GatedSiameseHead, RegressionHead, SiameseHead

ModuleDef = Callable[..., nn.Module]


def l2_normalize(x: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
    """``x / max(‖x‖, eps)`` along the last axis (torch's ``F.normalize``)."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True))
    return x / jnp.maximum(norm, eps)


def backbone_features(backbone: nn.Module, images: jnp.ndarray, train: bool) -> jnp.ndarray:
    """A backbone's float32 feature map ``(N, H/32, W/32, 512)``, what the heads compare."""
    return backbone(images, train=train, output="feature_map").astype(jnp.float32)


def _pool(feature_map: jnp.ndarray) -> jnp.ndarray:
    return jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2))


def retrieval_embedding(image_features: jnp.ndarray, rock_features: jnp.ndarray) -> jnp.ndarray:
    """The DSNN's retrieval embedding of one image: ``(normalize(f_img) + normalize(f_rock)) / 2`` of
    the pooled feature maps of both backbones."""
    return (l2_normalize(_pool(image_features)) + l2_normalize(_pool(rock_features))) / 2


class DSNN(nn.Module):
    """Double Siamese Network: image and rock backbones, gated Siamese head, regression head.

    Attributes:
      backbone: the factory of both branches' backbone (e.g. ``resnet("resnet18", axis_name="data")``),
        a module returning feature maps of ``output="feature_map"`` and pooled features of
        ``output="pooled"``.
      num_extra_targets: regression outputs beyond porosity and log-permeability.
    """

    backbone: ModuleDef
    num_extra_targets: int = 0

    def setup(self):
        self.image_backbone = self.backbone_module()
        self.rock_backbone = self.backbone_module()
        self.head = GatedSiameseHead()
        self.regression = RegressionHead(num_extra_targets=self.num_extra_targets)

    @nn.nowrap
    def backbone_module(self) -> nn.Module:
        """A new, unbound ResNet of the shape both branches have (for steps that run one branch alone)."""
        return self.backbone()

    def __call__(
        self, image0: jnp.ndarray, image1: jnp.ndarray, train: bool = False
    ) -> dict[str, jnp.ndarray]:
        """Similarities ``p``, ``p_img``, ``p_rock`` ``(N,)`` and regressions ``reg0``, ``reg1``."""
        h1 = backbone_features(self.image_backbone, image0, train)
        h2 = backbone_features(self.image_backbone, image1, train)
        h3 = backbone_features(self.rock_backbone, image0, train)
        h4 = backbone_features(self.rock_backbone, image1, train)
        return self.heads(h1, h2, h3, h4)

    def heads(
        self, h1: jnp.ndarray, h2: jnp.ndarray, h3: jnp.ndarray, h4: jnp.ndarray
    ) -> dict[str, jnp.ndarray]:
        """The outputs from the four feature maps: image backbone on images 0/1, rock backbone on 0/1."""
        p, p_img, p_rock = self.head(h1, h2, h3, h4)
        return {
            "p": p[:, 0],
            "p_img": p_img[:, 0],
            "p_rock": p_rock[:, 0],
            "reg0": self.regression(h3),
            "reg1": self.regression(h4),
            "embedding0": l2_normalize(retrieval_embedding(h1, h3)),
            "embedding1": l2_normalize(retrieval_embedding(h2, h4)),
        }

    def embed(self, images: jnp.ndarray) -> dict[str, jnp.ndarray]:
        """``embedding = (normalize(f_img) + normalize(f_rock)) / 2`` of pooled features, and ``reg``."""
        f_img = backbone_features(self.image_backbone, images, False)
        f_rock = backbone_features(self.rock_backbone, images, False)
        return {"embedding": retrieval_embedding(f_img, f_rock), "reg": self.regression(f_rock)}


class SiameseNet(nn.Module):
    """The paper's Siamese ResNet baseline: one backbone, similarity of ``mean_hw|h1 - h2|``."""

    backbone: ModuleDef

    def setup(self):
        self.image_backbone = self.backbone()
        self.head = SiameseHead()

    def __call__(
        self, image0: jnp.ndarray, image1: jnp.ndarray, train: bool = False
    ) -> dict[str, jnp.ndarray]:
        h1 = backbone_features(self.image_backbone, image0, train)
        h2 = backbone_features(self.image_backbone, image1, train)
        return {"p": self.head(h1, h2)[:, 0]}

    def embed(self, images: jnp.ndarray) -> dict[str, jnp.ndarray]:
        pooled = self.image_backbone(images, train=False, output="pooled").astype(jnp.float32)
        return {"embedding": l2_normalize(pooled)}


class VanillaNet(nn.Module):
    """The untrained baseline: normalised pooled features of a (pretrained) backbone."""

    backbone: ModuleDef

    def setup(self):
        self.image_backbone = self.backbone()

    def __call__(self, images: jnp.ndarray) -> dict[str, jnp.ndarray]:
        return self.embed(images)

    def embed(self, images: jnp.ndarray) -> dict[str, jnp.ndarray]:
        pooled = self.image_backbone(images, train=False, output="pooled").astype(jnp.float32)
        return {"embedding": l2_normalize(pooled)}

"""Flax models: torchvision-layout ResNets, the DSNN's heads, the full networks and their registry by name."""

from rockir_jax.models.dsnn import DSNN, SiameseNet, VanillaNet, l2_normalize
from rockir_jax.models.heads import GatedSiameseHead, RegressionHead, SiameseHead
from rockir_jax.models.registry import (
    backbone_names,
    build_model,
    model_names,
    register_backbone,
    register_model,
)
from rockir_jax.models.resnet import FEATURE_DIM, ResNet, resnet

__all__ = [
    "DSNN",
    "FEATURE_DIM",
    "GatedSiameseHead",
    "RegressionHead",
    "ResNet",
    "SiameseHead",
    "SiameseNet",
    "VanillaNet",
    "backbone_names",
    "build_model",
    "l2_normalize",
    "model_names",
    "register_backbone",
    "register_model",
    "resnet",
]

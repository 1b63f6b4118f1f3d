"""Flax models: torchvision-layout ResNets, the DSNN's heads and the full networks."""

from rockir_jax.models.dsnn import DSNN, SiameseNet, VanillaNet, build_model, l2_normalize
from rockir_jax.models.heads import GatedSiameseHead, RegressionHead, SiameseHead
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
    "build_model",
    "l2_normalize",
    "resnet",
]

"""Flax models: torchvision-layout ResNets, the DSNN's heads and the full networks."""

from rockir_jax.models.resnet import FEATURE_DIM, ResNet, ResNet18, ResNet34, build_resnet

__all__ = ["FEATURE_DIM", "ResNet", "ResNet18", "ResNet34", "build_resnet"]

"""Baseline: Siamese ResNet-34 with ImageNet weights (``--arch resnet34`` in the port script)."""

from configs import siamese_resnet18


def get_config():
    config = siamese_resnet18.get_config()
    config.backbone = "resnet34"
    config.pretrained = "weights/resnet34"
    return config

"""Baseline: Siamese ResNet-18 (one backbone, BCE on same-sample), the paper's setting otherwise."""

from configs import dsnn_resnet18


def get_config():
    config = dsnn_resnet18.get_config()
    config.model = "siamese"
    return config

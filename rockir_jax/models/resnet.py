"""ResNet-18/34 in Flax with torchvision's exact layout, padding and parameter names.

Submodule names mirror torchvision's state-dict keys (``conv1``, ``bn1``, ``layer1_0.conv1``,
``layer2_0.downsample_conv`` …) so that weight porting is a plain table (see
:mod:`rockir_jax.models.resnet_params`). Padding is explicit because ``SAME`` padding does not reproduce
torchvision's strided convolutions. Initialised as torchvision's (:mod:`rockir_jax.models.torch_init`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal

import flax.linen as nn
import jax.numpy as jnp

from rockir_jax.models import torch_init, winograd
from rockir_jax.models.pooling import max_pool

Output = Literal["logits", "pooled", "feature_map"]

STAGE_SIZES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)
FEATURE_DIM = STAGE_WIDTHS[-1]


class WinogradConv3x3(nn.Module):
    """A bias-free 3×3, stride-1, padding-1 convolution by Winograd F(2×2, 3×3), with ``nn.Conv``'s parameter.

    Same ``kernel`` name, shape (HWIO) and initialiser as ``nn.Conv``, so checkpoints and ported weights
    do not depend on the algorithm.
    """

    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param(
            "kernel", torch_init.conv_kernel_init, (3, 3, x.shape[-1], self.features), jnp.float32
        )
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        return winograd.conv3x3(x, kernel)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: two 3×3 convolutions and an optional 1×1 projection."""

    features: int
    strides: int
    conv: type[nn.Conv]
    norm: type[nn.BatchNorm]
    winograd_conv: type[WinogradConv3x3] | None = None
    """Runs the 3×3 stride-1 convolutions when set."""

    @nn.nowrap
    def conv3x3(self, strides: int, name: str) -> nn.Module:
        if strides == 1 and self.winograd_conv is not None:
            return self.winograd_conv(self.features, name=name)
        return self.conv(self.features, (3, 3), strides, padding=1, name=name)

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        residual = x
        y = self.conv3x3(self.strides, "conv1")(x)
        y = nn.relu(self.norm(name="bn1")(y))
        y = self.conv3x3(1, "conv2")(y)
        y = self.norm(name="bn2")(y)
        if self.strides != 1 or x.shape[-1] != self.features:
            residual = self.conv(self.features, (1, 1), self.strides, padding=0, name="downsample_conv")(x)
            residual = self.norm(name="downsample_bn")(residual)
        return nn.relu(y + residual)


class ResNet(nn.Module):
    """A torchvision-layout ResNet with basic blocks, on NHWC float input.

    Attributes:
      stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` for ResNet-18.
      num_classes: size of the ``fc`` classifier; ``None`` builds the backbone without it.
      axis_name: mesh axis over which BatchNorm averages batch statistics in training
        (cross-device BatchNorm inside ``shard_map``); ``None`` keeps them per device.
      dtype: computation dtype (parameters and BatchNorm statistics stay float32).
      conv_algorithm: ``"direct"``, ``"winograd"`` (F(2×2, 3×3), for the 3×3 stride-1 convolutions) or
        ``"auto"``: Winograd where it is faster, float32 on CPU from 128 channels
        (:func:`rockir_jax.models.winograd.use_winograd`).
    """

    stage_sizes: Sequence[int]
    num_classes: int | None = None
    axis_name: str | None = None
    dtype: jnp.dtype = jnp.float32
    conv_algorithm: winograd.ConvAlgorithm = "auto"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, output: Output | None = None) -> jnp.ndarray:
        """Runs the network.

        Args:
          x: images, ``(N, H, W, 3)``.
          train: use batch statistics and update ``batch_stats`` (mutable) instead of the running ones.
          output: ``"feature_map"`` (``(N, H/32, W/32, 512)``, what the DSNN trains on),
            ``"pooled"`` (``(N, 512)``, what retrieval embeds) or ``"logits"``; defaults to
            logits when the network has a classifier, else pooled features.
        """
        if output is None:
            output = "pooled" if self.num_classes is None else "logits"
        conv = partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=torch_init.conv_kernel_init)
        winograd_conv = partial(WinogradConv3x3, dtype=self.dtype)
        # torch momentum 0.1 is flax momentum 0.9
        norm = partial(
            nn.BatchNorm,
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=self.dtype,
            axis_name=self.axis_name if train else None,
        )
        x = x.astype(self.dtype)
        x = conv(STAGE_WIDTHS[0], (7, 7), 2, padding=3, name="conv1")(x)
        x = nn.relu(norm(name="bn1")(x))
        x = max_pool(x, window=3, stride=2, padding=1)
        for stage, (num_blocks, width) in enumerate(zip(self.stage_sizes, STAGE_WIDTHS, strict=True)):
            for block in range(num_blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                fast_conv = (
                    winograd_conv if winograd.use_winograd(self.conv_algorithm, width, self.dtype) else None
                )
                x = BasicBlock(width, strides, conv, norm, fast_conv, name=f"layer{stage + 1}_{block}")(x)
        if output == "feature_map":
            return x
        x = jnp.mean(x, axis=(1, 2))
        if output == "pooled":
            return x
        if output != "logits":
            raise ValueError(f"output must be 'logits', 'pooled' or 'feature_map', got {output!r}")
        if self.num_classes is None:
            raise ValueError("output='logits' needs a ResNet built with num_classes")
        return torch_init.dense(self.num_classes, x.shape[-1], "fc", self.dtype)(x)


def resnet(arch: str, **attributes) -> Callable[..., ResNet]:
    """The factory of a torchvision-layout ``arch`` (``"resnet18"`` or ``"resnet34"``) with ``attributes``
    (``num_classes``, ``axis_name``, ``dtype``, ``conv_algorithm``): call it for a module, as flax's
    examples inject ``conv`` and ``norm``."""
    if arch not in STAGE_SIZES:
        raise ValueError(f"unknown backbone {arch!r}; choose one of {sorted(STAGE_SIZES)}")
    return partial(ResNet, stage_sizes=STAGE_SIZES[arch], **attributes)

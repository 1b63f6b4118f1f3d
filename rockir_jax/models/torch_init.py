"""PyTorch's initialisers, so that a from-scratch run starts from the original's distribution.

- ``nn.Linear``'s default: weights and biases uniform in ``±1/sqrt(fan_in)``;
- torchvision's ResNet: convolutions ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, an
  untruncated normal of std ``sqrt(2 / fan_out)``; BatchNorm ``γ = 1``, ``β = 0`` (flax's defaults).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
"""torchvision ResNet's convolution initialiser (HWIO kernels: fan_out = O·H·W)."""


def linear_init(fan_in: int) -> nn.initializers.Initializer:
    """``nn.Linear``'s default initialiser of weights and biases: uniform in ``±1/sqrt(fan_in)``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(features: int, fan_in: int, name: str, dtype: jnp.dtype = jnp.float32) -> nn.Dense:
    """An ``nn.Dense`` initialised as ``torch.nn.Linear(fan_in, features)``."""
    init = linear_init(fan_in)
    return nn.Dense(features, dtype=dtype, name=name, kernel_init=init, bias_init=init)

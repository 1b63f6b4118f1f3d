"""Models and backbones by name: the config's ``model`` and ``backbone`` strings, as in big_vision.

A new backbone is one file with a builder and one registration: either decorate the builder,
``@register_backbone("mynet")``, and import that file from ``rockir_jax/models/__init__.py``, or add
``register_backbone("mynet")(mynet.builder)`` to the built-ins at the end of this module. A backbone
builder is called with the keyword options ``axis_name``, ``dtype`` and ``conv_algorithm`` (ignoring
those it has no use for) and returns a module factory: a callable returning a new, unbound backbone
whose ``__call__(images, train, output)`` gives ``output="feature_map"`` (``(N, h, w, C)``) and
``output="pooled"`` (``(N, C)``), like :class:`rockir_jax.models.resnet.ResNet`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple, TypeVar

import flax.linen as nn
import jax.numpy as jnp

from rockir_jax.models.dsnn import DSNN, SiameseNet, VanillaNet
from rockir_jax.models.resnet import STAGE_SIZES, resnet
from rockir_jax.models.winograd import ConvAlgorithm

ModuleDef = Callable[..., nn.Module]
# (*, axis_name, dtype, conv_algorithm) -> a module factory, which the networks call once per branch
BackboneBuilder = Callable[..., ModuleDef]
# (backbone: ModuleDef, *, num_extra_targets: int) -> the network
ModelBuilder = Callable[..., nn.Module]
Builder = TypeVar("Builder", bound=Callable)


class _Model(NamedTuple):
    builder: ModelBuilder
    trains: bool  # False: never trained, so its BatchNorm needs no cross-device axis


_BACKBONES: dict[str, BackboneBuilder] = {}
_MODELS: dict[str, _Model] = {}


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering a backbone builder under ``name``; a name is registered once."""

    def register(builder: Builder) -> Builder:
        _check_new("backbone", name, _BACKBONES)
        _BACKBONES[name] = builder
        return builder

    return register


def register_model(name: str, *, trains: bool = True) -> Callable[[Builder], Builder]:
    """Decorator registering a network builder under ``name``; ``trains=False`` marks a network that is
    never trained (its backbone is built without the data-parallel ``axis_name``)."""

    def register(builder: Builder) -> Builder:
        _check_new("model", name, _MODELS)
        _MODELS[name] = _Model(builder, trains)
        return builder

    return register


def backbone_names() -> tuple[str, ...]:
    """The registered backbones' names, sorted."""
    return tuple(sorted(_BACKBONES))


def model_names() -> tuple[str, ...]:
    """The registered networks' names, sorted."""
    return tuple(sorted(_MODELS))


def build_model(
    model: str,
    backbone: str,
    *,
    num_extra_targets: int = 0,
    axis_name: str | None = None,
    dtype: jnp.dtype = jnp.float32,
    conv_algorithm: ConvAlgorithm = "auto",
) -> nn.Module:
    """The network registered as ``model`` (``"dsnn"``, ``"siamese"``, ``"vanilla"``, …) around the
    backbone factory registered as ``backbone`` (``"resnet18"``, ``"resnet34"``, …); an unknown name is
    a ValueError listing the registered ones."""
    entry = _lookup("model", model, _MODELS)
    make_backbone = _lookup("backbone", backbone, _BACKBONES)
    factory = make_backbone(
        axis_name=axis_name if entry.trains else None, dtype=dtype, conv_algorithm=conv_algorithm
    )
    return entry.builder(factory, num_extra_targets=num_extra_targets)


def _check_new(kind: str, name: str, registry: dict) -> None:
    if name in registry:
        raise ValueError(f"{kind} {name!r} is already registered")


def _lookup(kind: str, name: str, registry: dict):
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(sorted(registry))}")
    return registry[name]


# The built-ins: torchvision-layout ResNets and the paper's three networks.
for _arch in STAGE_SIZES:
    register_backbone(_arch)(partial(resnet, _arch))


@register_model("dsnn")
def _dsnn(backbone: ModuleDef, *, num_extra_targets: int = 0) -> nn.Module:
    return DSNN(backbone, num_extra_targets)


@register_model("siamese")
def _siamese(backbone: ModuleDef, *, num_extra_targets: int = 0) -> nn.Module:
    return SiameseNet(backbone)


@register_model("vanilla", trains=False)
def _vanilla(backbone: ModuleDef, *, num_extra_targets: int = 0) -> nn.Module:
    return VanillaNet(backbone)

"""Networks and backbones by name: the built-ins as before, unknown names refused, a new one pluggable."""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from rockir_jax.models import DSNN, ResNet, SiameseNet, VanillaNet, build_model, registry
from rockir_jax.models.resnet import STAGE_SIZES


class ToyBackbone(nn.Module):
    """A one-convolution backbone with the ResNet's outputs: ``(N, H/32, W/32, 512)`` or ``(N, 512)``."""

    axis_name: str | None = None
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, output: str = "pooled") -> jnp.ndarray:
        x = nn.Conv(512, (32, 32), strides=32, dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name if train else None)(x)
        return x if output == "feature_map" else jnp.mean(x, axis=(1, 2))


def toy(*, axis_name: str | None = None, dtype: jnp.dtype = jnp.float32, **unused) -> partial:
    return partial(ToyBackbone, axis_name=axis_name, dtype=dtype)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made in a test are dropped after it."""
    monkeypatch.setattr(registry, "_BACKBONES", dict(registry._BACKBONES))
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))


def test_the_registered_names_are_the_old_ones():
    assert registry.model_names() == ("dsnn", "siamese", "vanilla")
    assert registry.backbone_names() == tuple(sorted(STAGE_SIZES)) == ("resnet18", "resnet34")


@pytest.mark.parametrize("backbone", sorted(STAGE_SIZES))
def test_built_ins_build_what_the_if_chain_built(backbone):
    options = {"axis_name": "data", "dtype": jnp.bfloat16, "conv_algorithm": "direct"}
    for model, cls in (("dsnn", DSNN), ("siamese", SiameseNet), ("vanilla", VanillaNet)):
        network = build_model(model, backbone, num_extra_targets=2, **options)
        assert type(network) is cls
        factory = network.backbone
        assert factory.func is ResNet
        # the vanilla network is never trained: no cross-device BatchNorm axis
        expected = options | {"axis_name": None if model == "vanilla" else "data"}
        assert factory.keywords == {"stage_sizes": STAGE_SIZES[backbone], **expected}
    assert build_model("dsnn", backbone, num_extra_targets=2).num_extra_targets == 2


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match=r"unknown model 'triplet'; choose one of dsnn, siamese, vanilla"):
        build_model("triplet", "resnet18")
    with pytest.raises(ValueError, match=r"unknown backbone 'vgg16'; choose one of resnet18, resnet34"):
        build_model("dsnn", "vgg16")


def test_a_name_is_registered_once(scratch_registry):
    with pytest.raises(ValueError, match="backbone 'resnet18' is already registered"):
        registry.register_backbone("resnet18")(toy)
    with pytest.raises(ValueError, match="model 'dsnn' is already registered"):
        registry.register_model("dsnn")(lambda backbone, **_: None)


def test_a_registered_backbone_builds_and_runs_by_name(scratch_registry):
    registry.register_backbone("toy")(toy)
    assert "toy" in registry.backbone_names()
    model = build_model("dsnn", "toy", num_extra_targets=1)
    image0, image1 = jnp.zeros((2, 32, 32, 3)), jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), image0, image1)
    outputs, _ = model.apply(variables, image0, image1, train=True, mutable=["batch_stats"])
    assert outputs["p"].shape == (2,) and outputs["reg0"].shape == (2, 3)
    embedded = model.apply(variables, image0, method=model.embed)
    assert embedded["embedding"].shape == (2, 512) and embedded["reg"].shape == (2, 3)
    siamese = build_model("siamese", "toy")
    assert siamese.apply(siamese.init(jax.random.key(0), image0, image1), image0, image1)["p"].shape == (2,)

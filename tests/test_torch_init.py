"""From-scratch initialisation has the original's distributions: torch-initialised modules as reference."""

import jax
import numpy as np
import pytest
from flax import traverse_util

from rockir_jax.models import GatedSiameseHead, RegressionHead, resnet

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")


def _flat(tree):
    return {k: np.asarray(v, np.float64) for k, v in traverse_util.flatten_dict(tree, sep="/").items()}


@pytest.fixture(scope="module")
def backbone_params():
    shapes = jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32)
    init = jax.jit(resnet("resnet18", num_classes=1000, conv_algorithm="direct")().init)
    return _flat(init(jax.random.key(0), np.zeros(shapes.shape, shapes.dtype)))


@pytest.fixture(scope="module")
def torch_backbone():
    torch.manual_seed(0)
    return {k: v.double().numpy() for k, v in torchvision.models.resnet18().state_dict().items()}


def test_resnet_convolutions_are_torchvisions_kaiming_normal_fan_out(backbone_params, torch_backbone):
    kernels = {k: v for k, v in backbone_params.items() if k.endswith("kernel") and v.ndim == 4}
    torch_kernels = {k: v for k, v in torch_backbone.items() if k.endswith("weight") and v.ndim == 4}
    assert len(kernels) == len(torch_kernels) == 20
    ours = sorted(
        (v.size, v.std(), np.abs(v).max() / v.std(), v.shape[-1] * v.shape[0] * v.shape[1])
        for v in kernels.values()
    )
    theirs = sorted(
        (v.size, v.std(), np.abs(v).max() / v.std(), v.shape[0] * v.shape[2] * v.shape[3])
        for v in torch_kernels.values()
    )
    for (size, std, tail, fan_out), (t_size, t_std, t_tail, t_fan_out) in zip(ours, theirs, strict=True):
        assert (size, fan_out) == (t_size, t_fan_out)
        expected = np.sqrt(2.0 / fan_out)
        assert t_std == pytest.approx(expected, rel=0.1)  # the reference follows the closed form
        assert std == pytest.approx(t_std, rel=0.1)
        if size > 100_000:  # an untruncated normal reaches past 2 std (flax's "normal" is truncated there)
            assert tail > 3.5 and t_tail > 3.5


def test_resnet_batchnorm_and_classifier_as_torchvision(backbone_params, torch_backbone):
    scales = [v for k, v in backbone_params.items() if k.endswith("scale")]
    biases = [v for k, v in backbone_params.items() if "bn" in k and k.endswith("bias")]
    assert scales and all((v == 1).all() for v in scales) and all((v == 0).all() for v in biases)
    bound = 1 / np.sqrt(512)
    for ours, theirs in ((backbone_params["params/fc/kernel"], torch_backbone["fc.weight"]),
                         (backbone_params["params/fc/bias"], torch_backbone["fc.bias"])):  # fmt: skip
        assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
        assert ours.std() == pytest.approx(theirs.std(), rel=0.1)


@pytest.mark.parametrize("head", ["gated", "regression"])
def test_heads_are_torch_linear_uniform(head):
    feature_map = np.zeros((1, 1, 1, 512), np.float32)
    key = jax.random.key(0)
    if head == "gated":
        params = _flat(GatedSiameseHead().init(key, *[feature_map] * 4)["params"])
        torch_layers = {"fc_fusion": torch.nn.Linear(1024, 32), "fc_out": torch.nn.Linear(512, 1)}
    else:
        params = _flat(RegressionHead().init(key, feature_map)["params"])
        torch_layers = {"fc": torch.nn.Linear(512, 64), "out_por": torch.nn.Linear(64, 1)}
    for name, kernel in ((k.split("/")[0], v) for k, v in params.items() if k.endswith("kernel")):
        bound = 1 / np.sqrt(kernel.shape[0])
        bias = params[f"{name}/bias"]
        assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound, name
        assert np.abs(bias).max() > 0, name  # torch draws biases too; flax's default is zeros
        if kernel.size >= 1000:
            assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.05), name
            assert np.abs(kernel).max() > 0.95 * bound, name
    for name, layer in torch_layers.items():
        weight = layer.weight.detach().double().numpy()
        ours = params[f"{name}/kernel"]
        assert ours.shape == weight.T.shape
        assert np.abs(ours).max() <= np.abs(weight).max() * 1.05 + 1e-12
        if weight.size >= 1000:
            assert ours.std() == pytest.approx(weight.std(), rel=0.05), name

"""Flax ResNets with ported weights against torchvision, the reference implementation."""

import re

import jax
import numpy as np
import pytest

from rockir_jax.models import resnet, resnet_params

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

RTOL = 1e-5


def _torchvision_model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None)
    generator = torch.Generator().manual_seed(seed + 1)
    # Fresh BN layers (mean 0, var 1, scale 1, bias 0) would hide a mis-ported statistic.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(0.8 + 0.4 * torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return model


@pytest.fixture(scope="module", params=["resnet18", "resnet34"])
def ported(request, tmp_path_factory):
    arch = request.param
    model = _torchvision_model(arch)
    path = tmp_path_factory.mktemp(arch) / f"{arch}.pth"
    torch.save(model.state_dict(), path)
    variables = resnet_params.torchvision_to_flax(resnet_params.load_torch_state_dict(path), arch=arch)
    return arch, model, variables


def _relative_error(actual, reference) -> float:
    reference = np.asarray(reference)
    return float(np.max(np.abs(np.asarray(actual) - reference)) / np.max(np.abs(reference)))


def _torch_pooled(model, x_nchw):
    backbone = torch.nn.Sequential(*list(model.children())[:-1])
    return backbone(x_nchw).flatten(1)


@pytest.mark.parametrize("height,width", [(224, 224), (160, 192)])
def test_eval_logits_and_pooled_match_torchvision(ported, height, width):
    arch, model, variables = ported
    x = np.random.default_rng(1).standard_normal((2, 3, height, width)).astype(np.float32)
    model.eval()
    with torch.no_grad():
        logits_ref = model(torch.from_numpy(x)).numpy()
        pooled_ref = _torch_pooled(model, torch.from_numpy(x)).numpy()
    flax_model = resnet(arch, num_classes=1000)()
    x_nhwc = x.transpose(0, 2, 3, 1)
    logits = flax_model.apply(variables, x_nhwc, train=False)
    pooled = flax_model.apply(variables, x_nhwc, train=False, output="pooled")
    assert logits.shape == (2, 1000)
    assert _relative_error(logits, logits_ref) <= RTOL
    assert _relative_error(pooled, pooled_ref) <= RTOL


@pytest.mark.parametrize("conv_algorithm", ["direct", "winograd"])  # "auto": the tests above
def test_public_api_resnet18_logits(ported, conv_algorithm):
    arch, model, variables = ported
    if arch != "resnet18":
        pytest.skip("the README example is ResNet-18")
    x = np.random.default_rng(2).standard_normal((1, 224, 224, 3)).astype(np.float32)
    model.eval()
    with torch.no_grad():
        reference = model(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    logits = resnet("resnet18", num_classes=1000, conv_algorithm=conv_algorithm)().apply(
        variables, x, train=False
    )
    assert _relative_error(logits, reference) <= RTOL


def test_train_mode_batch_statistics_match_torchvision(ported):
    """Train mode: same outputs from batch statistics; running statistics updated as torch does.

    torch stores the unbiased batch variance in ``running_var``, flax the biased one; with n values per
    channel the two updates differ by the factor n / (n - 1) on the batch term, which is what we check.
    """
    arch, model, variables = ported
    x = np.random.default_rng(3).standard_normal((4, 3, 32, 32)).astype(np.float32)
    model.train()
    old_mean = model.bn1.running_mean.clone().numpy()
    old_var = model.bn1.running_var.clone().numpy()
    with torch.no_grad():
        logits_ref = model(torch.from_numpy(x)).numpy()
    new_mean_ref = model.bn1.running_mean.clone().numpy()
    new_var_ref = model.bn1.running_var.clone().numpy()
    model.load_state_dict(_torchvision_model(arch).state_dict())  # undo the update for later tests

    logits, updates = resnet(arch, num_classes=1000)().apply(
        variables, x.transpose(0, 2, 3, 1), train=True, mutable=["batch_stats"]
    )
    assert _relative_error(logits, logits_ref) <= 1e-4
    stats = updates["batch_stats"]["bn1"]
    np.testing.assert_allclose(stats["mean"], new_mean_ref, rtol=1e-5, atol=1e-6)
    n = x.shape[0] * 16 * 16  # values per channel after the stride-2 stem
    torch_batch_var = (new_var_ref - 0.9 * old_var) / 0.1
    flax_batch_var = (np.asarray(stats["var"]) - 0.9 * old_var) / 0.1
    np.testing.assert_allclose(flax_batch_var, torch_batch_var * (n - 1) / n, rtol=1e-4, atol=1e-6)
    assert not np.allclose(new_mean_ref, old_mean)  # the batch really moved the statistics


def test_rockir_sequential_naming_ports_like_torchvision(ported, tmp_path):
    """The original saved ``nn.Sequential(*children[:-2])`` inside DDP: ``module.0.weight`` …"""
    arch, model, variables = ported
    backbone = torch.nn.Sequential(*list(model.children())[:-2])
    path = tmp_path / "rockir_backbone.pt"
    torch.save({f"module.{key}": value for key, value in backbone.state_dict().items()}, path)
    state = resnet_params.load_torch_state_dict(path)
    assert "0.weight" in state and "7.1.bn2.running_var" in state
    sequential = resnet_params.torchvision_to_flax(state, arch=arch)
    expected = dict(variables)
    expected["params"] = {k: v for k, v in variables["params"].items() if k != "fc"}
    jax.tree.map(np.testing.assert_array_equal, sequential, expected)
    assert "fc" not in sequential["params"]


def test_wrong_architecture_lists_every_mismatch(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(_torchvision_model("resnet34").state_dict(), path)
    with pytest.raises(resnet_params.PortingError) as error:
        resnet_params.torchvision_to_flax(resnet_params.load_torch_state_dict(path), arch="resnet18")
    message = str(error.value)
    # ResNet-34 has blocks layer1.2, layer2.2-3, layer3.2-5 and layer4.2 that ResNet-18 lacks.
    extra_blocks = {"layer1.2", "layer2.2", "layer2.3", "layer3.2", "layer3.5", "layer4.2"}
    for block in extra_blocks:
        assert f"'{block}.conv1.weight'" in message
    unexpected = re.findall(r"unexpected key '([^']+)'", message)
    assert len(unexpected) == 8 * 10  # 8 extra blocks: 2 convs + 2 BNs × 4 tensors each


def test_missing_key_is_reported(ported):
    arch, model, _ = ported
    state = {k: v.numpy() for k, v in model.state_dict().items() if k != "layer4.1.bn2.running_var"}
    with pytest.raises(resnet_params.PortingError, match=r"missing key for batch_stats/layer4_1/bn2/var"):
        resnet_params.torchvision_to_flax(state, arch=arch)


def test_port_script_writes_restorable_checkpoint(tmp_path, capsys):
    from scripts.port_torchvision_weights import main

    model = _torchvision_model("resnet18", seed=5)
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    main(["--arch", "resnet18", "--pth", str(path), "--out", str(tmp_path / "ported")])
    restored = resnet_params.load_variables(tmp_path / "ported")
    np.testing.assert_array_equal(
        restored["params"]["conv1"]["kernel"],
        model.conv1.weight.detach().numpy().transpose(2, 3, 1, 0),
    )
    with pytest.raises(SystemExit) as exited:
        main(["--arch", "resnet34", "--pth", str(path), "--out", str(tmp_path / "bad")])
    assert exited.value.code == 2 and "missing key" in capsys.readouterr().err


def test_resnet_factory_builds_the_stage_sizes():
    assert resnet("resnet34")().stage_sizes == (3, 4, 6, 3)

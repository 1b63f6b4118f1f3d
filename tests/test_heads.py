"""The DSNN's heads against float64 numpy written from the original's model_siamese_rock18_gated.py, with
the real checkpoints of the original RockIR."""

from pathlib import Path

import jax
import numpy as np
import pytest

from rockir_jax.models import DSNN, GatedSiameseHead, RegressionHead, SiameseNet, resnet, resnet_params

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "rockir_pytorch_checkpoints"
SIAM_PT = FIXTURES / "siam_epoch-920.pt"
REG_PT = FIXTURES / "reg_epoch-920.pt"


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _linear(params, name, x):
    return x @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"], np.float64)


def reference_head(params, h1, h2, h3, h4):
    """float64, the original's ``Siamese.forward``."""
    w1 = np.abs(h1 - h2).mean(axis=(1, 2))
    w2 = np.abs(h3 - h4).mean(axis=(1, 2))
    p_img = _sigmoid(_linear(params, "fc_out_image", w1))
    p_rock = _sigmoid(_linear(params, "fc_out_rock", w2))
    g = np.maximum(_linear(params, "fc_fusion", np.concatenate([w1, w2], axis=1)), 0)
    g = np.maximum(_linear(params, "fc_fusion2", g), 0)
    g = np.maximum(_linear(params, "fc_fusion3", g), 0)
    s = np.exp(g - g.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    w = (w1 * s[:, 0:1] + w2 * s[:, 1:2]) / 2
    return _sigmoid(_linear(params, "fc_out", w)), p_img, p_rock


def reference_regression(params, h):
    x = np.maximum(_linear(params, "fc", h.mean(axis=(1, 2))), 0)
    return np.concatenate([_linear(params, "out_por", x), _linear(params, "out_perm", x)], axis=1)


def _feature_maps(count, seed=0, shape=(4, 7, 7, 512)):
    rng = np.random.default_rng(seed)
    # Post-ReLU backbone features are non-negative.
    return [np.abs(rng.standard_normal(shape)).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def rockir_heads():
    pytest.importorskip("torch")
    if not SIAM_PT.exists():
        pytest.skip(f"{FIXTURES} not present")
    return resnet_params.import_rockir_heads(SIAM_PT, REG_PT)


def test_imported_gated_head_matches_reference(rockir_heads):
    head_variables, _ = rockir_heads
    h = _feature_maps(4)
    outputs = GatedSiameseHead().apply(head_variables, *h)
    expected = reference_head(head_variables["params"], *[x.astype(np.float64) for x in h])
    for actual, reference in zip(outputs, expected, strict=True):
        assert actual.shape == (4, 1)
        np.testing.assert_allclose(actual, reference, rtol=1e-5, atol=1e-6)


def test_imported_regression_head_matches_reference(rockir_heads):
    _, regression_variables = rockir_heads
    (h,) = _feature_maps(1, seed=1)
    actual = RegressionHead().apply(regression_variables, h)
    assert actual.shape == (4, 2)
    expected = reference_regression(regression_variables["params"], h.astype(np.float64))
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_imported_heads_equal_the_torch_files(rockir_heads):
    import torch

    head_variables, regression_variables = rockir_heads
    siam = torch.load(SIAM_PT, map_location="cpu", weights_only=True)
    np.testing.assert_array_equal(
        head_variables["params"]["fc_fusion"]["kernel"],
        siam["module.fc_fusion.0.weight"].numpy().T,
    )
    reg = torch.load(REG_PT, map_location="cpu", weights_only=True)
    np.testing.assert_array_equal(
        regression_variables["params"]["out_perm"]["bias"], reg["module.out_perm.0.bias"].numpy()
    )


def test_heads_with_swapped_files_list_every_mismatch(rockir_heads):
    with pytest.raises(resnet_params.PortingError, match=r"unexpected key 'out_por\.0\.weight'") as error:
        resnet_params.import_rockir_heads(REG_PT, SIAM_PT)
    assert "missing key for params/fc_out_image/kernel" in str(error.value)


def test_dsnn_outputs_and_embedding_follow_the_formulas():
    model = DSNN(resnet("resnet18"))
    rng = np.random.default_rng(3)
    x0, x1 = rng.standard_normal((2, 3, 32, 32, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), x0, x1)
    outputs = model.apply(variables, x0, x1)
    assert {k: v.shape for k, v in outputs.items()} == {
        "p": (3,),
        "p_img": (3,),
        "p_rock": (3,),
        "reg0": (3, 2),
        "reg1": (3, 2),
        "embedding0": (3, 512),
        "embedding1": (3, 512),
    }
    backbone = lambda name, x: model.apply(
        variables, x, method=lambda m, x: getattr(m, name)(x, output="feature_map")
    )
    h = [backbone(name, x) for name in ("image_backbone", "rock_backbone") for x in (x0, x1)]
    h1, h2, h3, h4 = (np.asarray(v, np.float64) for v in h)
    p, p_img, _ = reference_head(variables["params"]["head"], h1, h2, h3, h4)
    np.testing.assert_allclose(outputs["p"], p[:, 0], rtol=1e-5)
    np.testing.assert_allclose(outputs["p_img"], p_img[:, 0], rtol=1e-5)
    reg = reference_regression(variables["params"]["regression"], h4)
    np.testing.assert_allclose(outputs["reg1"], reg, rtol=1e-4, atol=1e-5)

    embedded = model.apply(variables, x0, method=model.embed)
    f_img, f_rock = h1.mean(axis=(1, 2)), h3.mean(axis=(1, 2))
    expected = (
        f_img / np.linalg.norm(f_img, axis=1, keepdims=True)
        + f_rock / np.linalg.norm(f_rock, axis=1, keepdims=True)
    ) / 2
    np.testing.assert_allclose(embedded["embedding"], expected, rtol=1e-5, atol=1e-6)
    # The pair outputs' embeddings, for the contrastive term: the same, as unit vectors.
    unit = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(outputs["embedding0"], unit, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        embedded["reg"],
        reference_regression(variables["params"]["regression"], h3),
        rtol=1e-4,
        atol=1e-5,
    )


def test_siamese_net_similarity_and_embedding():
    model = SiameseNet(resnet("resnet18"))
    rng = np.random.default_rng(4)
    x0, x1 = rng.standard_normal((2, 2, 32, 32, 3)).astype(np.float32)
    variables = model.init(jax.random.key(1), x0, x1)
    features = [
        np.asarray(
            model.apply(variables, x, method=lambda m, x: m.image_backbone(x, output="feature_map")),
            np.float64,
        )
        for x in (x0, x1)
    ]
    w = np.abs(features[0] - features[1]).mean(axis=(1, 2))
    expected = _sigmoid(_linear(variables["params"]["head"], "fc_out", w))[:, 0]
    np.testing.assert_allclose(model.apply(variables, x0, x1)["p"], expected, rtol=1e-5)
    pooled = features[0].mean(axis=(1, 2))
    np.testing.assert_allclose(
        model.apply(variables, x0, method=model.embed)["embedding"],
        pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
        rtol=1e-5,
        atol=1e-6,
    )


def test_import_command_assembles_a_full_dsnn(tmp_path):
    """The original's four files (backbones saved as DDP-wrapped ``nn.Sequential``) → one DSNN."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    if not SIAM_PT.exists():
        pytest.skip(f"{FIXTURES} not present")
    from rockir_jax.cli.import_rockir import main

    backbones = {}
    for branch, seed in (("image", 0), ("rock", 1)):
        torch.manual_seed(seed)
        torch_resnet = torchvision.models.resnet18(weights=None).eval()
        sequential = torch.nn.Sequential(*list(torch_resnet.children())[:-2])
        torch.save({f"module.{k}": v for k, v in sequential.state_dict().items()}, tmp_path / f"{branch}.pt")
        backbones[branch] = sequential
    out = tmp_path / "dsnn"
    arguments = ["--image", tmp_path / "image.pt", "--rock", tmp_path / "rock.pt"]
    arguments += ["--siam", SIAM_PT, "--reg", REG_PT, "--out", out]
    main([str(a) for a in arguments])

    variables = resnet_params.load_variables(out)
    x = np.random.default_rng(5).standard_normal((2, 32, 32, 3)).astype(np.float32)
    x_flipped = np.ascontiguousarray(x[::-1])
    with torch.no_grad():
        h = [
            backbones[b](torch.from_numpy(xi.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
            for b in ("image", "rock")
            for xi in (x, x_flipped)
        ]
    expected = reference_head(
        resnet_params.import_rockir_heads(SIAM_PT, REG_PT)[0]["params"], *[v.astype(np.float64) for v in h]
    )
    outputs = DSNN(resnet("resnet18")).apply(variables, x, x_flipped)
    np.testing.assert_allclose(outputs["p"], expected[0][:, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(outputs["p_rock"], expected[2][:, 0], rtol=1e-4, atol=1e-6)

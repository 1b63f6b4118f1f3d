"""The texture baseline: its features and ridge regression against closed forms, and its row in the
comparison, fitted on the (possibly limited) training split."""

import json

import numpy as np
import pytest
from test_evaluate import make_rocks, short_config

from rockir_jax.experiments import comparison as compare
from rockir_jax.retrieval import texture


def test_grey_histogram_counts_pixels_per_grey_range():
    image = np.zeros((4, 8), np.uint8)
    image[:, 4:] = 255  # half black, half white
    image[0, 0] = 16  # 16 * 16 // 256 = 1: the second of 16 ranges
    expected = np.zeros(16)
    expected[0], expected[1], expected[15] = 15 / 32, 1 / 32, 16 / 32
    np.testing.assert_array_equal(texture.grey_histogram(image, 16), expected)


@pytest.mark.parametrize("cycles", [1, 5, 12, 27])
def test_a_cosine_puts_all_its_power_in_the_band_of_its_frequency(cycles):
    size, bins = 64, 8
    x = np.arange(size)
    image = np.tile(100 + 50 * np.cos(2 * np.pi * cycles * x / size), (size, 1))
    spectrum = texture.radial_power_spectrum(image, bins)
    # cycles / size cycles per pixel; bands of width 0.5 / bins.
    expected = np.zeros(bins)
    expected[int(cycles / size / (0.5 / bins))] = 1.0
    np.testing.assert_allclose(spectrum, expected, atol=1e-12)


def test_features_of_a_colour_image_are_those_of_its_grey_mean():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    features = texture.texture_features(np.repeat(grey[..., None], 3, axis=-1))
    np.testing.assert_allclose(features, texture.texture_features(grey))
    assert features.shape == (2 * texture.DEFAULT_BINS,) and np.isfinite(features).all()
    assert np.isfinite(texture.texture_features(np.full((32, 32), 7, np.uint8))).all()  # no power at all


@pytest.mark.parametrize("ridge", [0.0, 3.0])
def test_ridge_regression_solves_the_augmented_least_squares_problem(ridge):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    y = x @ rng.normal(size=(5, 2)) + 0.7 + rng.normal(0, 0.1, (40, 2))
    weights, intercept = texture.fit_ridge(x, y, ridge)
    # Independent form: an unpenalised intercept column, and sqrt(ridge)·I rows penalising the weights.
    design = np.block([[np.ones((40, 1)), x], [np.zeros((5, 1)), np.sqrt(ridge) * np.eye(5)]])
    solution = np.linalg.lstsq(design, np.vstack([y, np.zeros((5, 2))]), rcond=None)[0]
    np.testing.assert_allclose(intercept, solution[0], atol=1e-10)
    np.testing.assert_allclose(weights, solution[1:], atol=1e-10)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """2 training samples and 1 held-out ``db_test`` sample per reservoir."""
    root = tmp_path_factory.mktemp("rocks")
    make_rocks(root, db_test=1)
    return root


def test_texture_row_of_the_comparison(root, tmp_path):
    config = short_config(root, tmp_path / "cache")
    table = compare.compare_models(config, tmp_path / "out", models=["Texture"], seeds=[0, 1])
    (row,) = table["models"]
    assert row["name"] == "Texture" and row["steps"] == 0
    # The toy's reservoirs differ in mean brightness by construction: the grey histogram tells them
    # apart (chance is about 0.3: 3 of the 11 other images share a query's reservoir).
    assert row["metrics"]["reservoir/map@10"] > 0.9
    assert np.isfinite(row["metrics"]["metadata/porosity_r2"])
    assert row["metrics_std"]["reservoir/map@10"] == 0.0  # deterministic
    report = json.loads((tmp_path / "out" / "eval" / "Texture" / "seed0" / "metrics.json").read_text())
    assert report["model"]["model"] == "texture" and report["n_images"] == 12


def test_texture_fits_on_the_limited_training_split(root, tmp_path, monkeypatch):
    config = short_config(root, tmp_path / "cache")
    fitted = []
    real_fit = texture.fit_texture_baseline

    def recording_fit(train, image_size):
        fitted.append(sorted(set(train.samples.tolist())))
        return real_fit(train, image_size)

    monkeypatch.setattr(compare, "fit_texture_baseline", recording_fit)
    compare.compare_models(config, tmp_path / "all", models=["Texture"])
    config.data.train_samples_per_reservoir = 1
    compare.compare_models(config, tmp_path / "one", models=["Texture"])
    every, first = fitted
    assert len(first) == 3 and set(first) < set(every) and len(every) > 3

"""A classical baseline without deep learning: grey-level histogram and radial power spectrum.

Each slice becomes ``2 * bins`` numbers (grey-level fractions and power-spectrum shares per frequency
band), standardised with the training split's statistics; a ridge regression on them predicts the targets,
and search uses them as embeddings, as the networks' embeddings. The features in detail: docs/internals.md.

Pipeline::

    baseline = fit_texture_baseline(list_images(root, csv, split="train"), image_size=128)
    index = baseline.index(list_images(root, csv, split="db_test"))
    metrics = evaluate_index(index, k=10)                          # rockir_jax.retrieval.evaluation
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rockir_jax.data.database import DEFAULT_TARGETS
from rockir_jax.data.metadata import SplitTable, TargetSpec
from rockir_jax.images import read_image
from rockir_jax.retrieval.evaluation import table_index
from rockir_jax.retrieval.index import RetrievalIndex

DEFAULT_BINS = 16
DEFAULT_RIDGE = 1.0


def grey_histogram(image: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """(bins,) fraction of the pixels of a uint8 image (H, W) in each of ``bins`` equal grey ranges."""
    counts = np.bincount((image.astype(np.int64).ravel() * bins) // 256, minlength=bins)
    return counts / image.size


def radial_power_spectrum(image: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """(bins,) share of the image's (mean removed) power in each of ``bins`` equal bands of radial
    spatial frequency over [0, 0.5) cycles per pixel; corner frequencies beyond Nyquist are left out."""
    pixels = np.asarray(image, np.float64)
    power = np.abs(np.fft.fft2(pixels - pixels.mean())) ** 2
    fy = np.fft.fftfreq(pixels.shape[0])[:, None]
    fx = np.fft.fftfreq(pixels.shape[1])[None, :]
    band = np.floor(np.hypot(fy, fx) * 2 * bins).astype(np.int64)
    inside = band < bins
    shares = np.bincount(band[inside], weights=power[inside], minlength=bins)
    return shares / max(shares.sum(), np.finfo(np.float64).tiny)


def texture_features(image: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """(2 * bins,) grey histogram and log radial power spectrum of a uint8 image (H, W) or (H, W, C)."""
    grey = image if image.ndim == 2 else image.mean(axis=-1).round().astype(np.uint8)
    spectrum = radial_power_spectrum(grey, bins)
    # A floor keeps empty bands (a flat image) finite.
    return np.concatenate([grey_histogram(grey, bins), np.log(spectrum + 1e-12)])


def read_texture_features(
    paths: Sequence[str | Path], image_size: int, bins: int = DEFAULT_BINS
) -> np.ndarray:
    """(N, 2 * bins) :func:`texture_features` of image files, read at ``image_size`` as networks read them."""
    return np.stack([texture_features(read_image(path, image_size), bins) for path in paths])


def fit_ridge(features: np.ndarray, targets: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights (D, T) and intercept (T,) minimising ``|X w + b - y|² + ridge |w|²`` (b not penalised)."""
    x_mean, y_mean = features.mean(axis=0), targets.mean(axis=0)
    x, y = features - x_mean, targets - y_mean
    weights = np.linalg.solve(x.T @ x + ridge * np.eye(x.shape[1]), x.T @ y)
    return weights, y_mean - x_mean @ weights


@dataclasses.dataclass(frozen=True)
class TextureBaseline:
    """Feature standardisation and ridge regression fitted on a training split."""

    image_size: int
    bins: int
    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    weights: np.ndarray  # (D, 2): porosity and log-permeability targets
    intercept: np.ndarray  # (2,)
    target_spec: TargetSpec = DEFAULT_TARGETS

    @property
    def identity(self) -> dict[str, Any]:
        """What made an index's embeddings (as a network's identity)."""
        return {"model": "texture", "image_size": self.image_size, "bins": self.bins}

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Standardised features: the search vectors."""
        return (features - self.mean) / self.std

    def index(self, table: SplitTable) -> RetrievalIndex:
        """The :class:`RetrievalIndex` of ``table``: standardised features and ridge predictions."""
        embeddings = self.embed(read_texture_features(table.paths, self.image_size, self.bins))
        predicted = embeddings @ self.weights + self.intercept
        return table_index(table, embeddings, self.identity, predicted, self.target_spec)


def fit_texture_baseline(
    train: SplitTable, image_size: int, bins: int = DEFAULT_BINS, ridge: float = DEFAULT_RIDGE
) -> TextureBaseline:
    """Standardisation and ridge regression (on porosity and log-permeability) fitted on ``train``."""
    features = read_texture_features(train.paths, image_size, bins)
    mean, std = features.mean(axis=0), features.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # a constant feature (e.g. an always-empty grey range) stays 0
    weights, intercept = fit_ridge((features - mean) / std, train.targets[:, :2].astype(np.float64), ridge)
    return TextureBaseline(image_size, bins, mean, std, weights, intercept)

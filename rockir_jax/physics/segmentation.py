"""Grey-level volumes to pore masks: Otsu's threshold, a given threshold, or a segmented volume's label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

# integer data spanning at most this many grey levels gets one histogram bin per level (exact Otsu)
_MAX_INTEGER_BINS = 65536


def _histogram(values: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and edges; one bin per grey level for integer data, so thresholds fall between levels."""
    low, high = values.min(), values.max()
    if np.issubdtype(values.dtype, np.integer) and int(high) - int(low) < _MAX_INTEGER_BINS:
        counts = np.bincount((values.ravel() - low).astype(np.int64), minlength=int(high) - int(low) + 1)
        return counts, np.arange(int(low), int(high) + 2) - 0.5
    return np.histogram(values, bins=bins, range=(float(low), float(high)))


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the bin edge that maximises the between-class variance of ``values``.

    Integer data is binned one grey level per bin, so the threshold is a half-integer and exact;
    float data uses ``bins`` equal bins between its minimum and maximum. Raises ValueError for
    constant data, which has no two classes.
    """
    values = np.asarray(values)
    if values.size == 0 or values.min() == values.max():
        raise ValueError("constant intensity: no threshold separates two phases")
    counts, edges = _histogram(values, bins)
    centres = (edges[:-1] + edges[1:]) / 2
    counts = counts.astype(np.float64)
    # class 0 = bins [0, k), class 1 = bins [k, n) for k = 1 … n-1
    weight0 = np.cumsum(counts)[:-1]
    weight1 = counts.sum() - weight0
    sum0 = np.cumsum(counts * centres)[:-1]
    mean0 = sum0 / np.maximum(weight0, 1e-300)
    mean1 = ((counts * centres).sum() - sum0) / np.maximum(weight1, 1e-300)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(edges[1 + int(np.argmax(between))])


MIN_PHASE_CONTRAST = 4.0
"""Two phases' mean grey levels must differ by this many within-phase standard deviations: Otsu's
threshold splits the noise of a one-phase volume into classes only about 2.7 apart."""


def phase_contrast(values: np.ndarray, threshold: float) -> float:
    """``|mean above − mean below| / pooled within-class standard deviation`` of ``values`` split at
    ``threshold``: large for a pore and a solid phase, small (≈ 2.7 for Gaussian noise) for one phase."""
    values = np.asarray(values, np.float64).ravel()
    below, above = values[values <= threshold], values[values > threshold]
    if below.size == 0 or above.size == 0:
        return 0.0
    within = (below.var() * below.size + above.var() * above.size) / values.size
    return float(abs(above.mean() - below.mean()) / max(np.sqrt(within), 1e-12))


@dataclass(frozen=True)
class Segmentation:
    """How pore voxels are told from solid ones.

    ``method``: ``"otsu"`` (threshold from the data), ``"threshold"`` (``value`` given) or
    ``"label"`` (an already segmented volume: pores are the voxels equal to ``value``). With a
    threshold, pores are the voxels at or below it when ``pores`` is ``"dark"`` (resin or air in
    micro-CT), at or above it when ``"bright"``.
    """

    method: Literal["otsu", "threshold", "label"] = "otsu"
    value: float | None = None
    pores: Literal["dark", "bright"] = "dark"

    def __post_init__(self) -> None:
        if self.method not in ("otsu", "threshold", "label"):
            raise ValueError(f"unknown segmentation method {self.method!r}")
        if self.pores not in ("dark", "bright"):
            raise ValueError(f"pores must be 'dark' or 'bright', got {self.pores!r}")
        if self.method != "otsu" and self.value is None:
            raise ValueError(f"segmentation {self.method!r} needs a value")

    def threshold(self, sample: np.ndarray) -> float:
        """The threshold (or pore label) for a volume, Otsu's computed from ``sample`` of its voxels."""
        if self.method == "otsu":
            return otsu_threshold(sample)
        assert self.value is not None
        return float(self.value)

    def pore_mask(self, values: np.ndarray, threshold: float) -> np.ndarray:
        """True on pore voxels of ``values`` given this volume's :meth:`threshold`."""
        if self.method == "label":
            return values == threshold
        return values <= threshold if self.pores == "dark" else values >= threshold

    def describe(self, threshold: float) -> str:
        """A short record of the segmentation, e.g. ``otsu threshold 97.5, dark pores``."""
        if self.method == "label":
            return f"segmented volume, pore label {threshold:g}"
        return f"{self.method} threshold {threshold:g}, {self.pores} pores"

"""Geometric properties of a pore volume (True = pore)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def porosity(pore: np.ndarray) -> float:
    """Pore voxel fraction."""
    return float(np.count_nonzero(pore)) / pore.size


def specific_surface(pore: np.ndarray) -> float:
    """Pore-solid interface area per bulk volume (1/voxel), counted on voxel faces."""
    pore = np.asarray(pore, dtype=bool)
    faces = sum(int(np.count_nonzero(np.diff(pore.view(np.int8), axis=a))) for a in range(pore.ndim))
    return faces / pore.size


def spanning_pores(pore: np.ndarray, axis: int = 0) -> np.ndarray:
    """Pore voxels of face-connected clusters touching both faces normal to ``axis``.

    6-connectivity on purpose: snow2 links regions touching at edges or corners, which would
    otherwise give k > 0 for impermeable images.
    """
    labels, _ = ndi.label(pore)
    inlet = np.unique(np.take(labels, 0, axis=axis))
    outlet = np.unique(np.take(labels, -1, axis=axis))
    spanning = np.intersect1d(inlet, outlet)
    spanning = spanning[spanning > 0]
    return np.isin(labels, spanning)

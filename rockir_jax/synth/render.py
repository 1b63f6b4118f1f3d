"""Micro-CT-like rendering of pore masks: resin-dark pores, grains in mineral greys, blur and noise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from rockir_jax.synth.volumes import FLOW_AXIS, Rock, smooth_noise

RESIN_GREY = 62.0
MINERAL_GREY = {
    "quartz": 134.0,
    "feldspar": 146.0,
    "clay": 105.0,
    "calcite": 158.0,
    "dolomite": 170.0,
    "heavy": 235.0,
}


def grain_labels(solid: np.ndarray) -> np.ndarray:
    """Grains (from 1) of a 2-D solid mask, 0 on pores: solid pixels go to their nearest marker.

    Markers are maxima of the smoothed distance map, i.e. grain centres; the nearest-centre
    partition approximates the contacts of a packing. 2-D, not 3-D: slices are farther apart than
    a grain, so consistency across slices would cost a 3-D watershed for nothing visible.
    """
    depth = ndi.gaussian_filter(ndi.distance_transform_edt(solid), 1.0)
    peaks = (depth == ndi.maximum_filter(depth, size=5)) & (depth > 1.0) & solid
    markers, _ = ndi.label(peaks)
    if markers.max() == 0:
        return ndi.label(solid)[0]
    nearest = ndi.distance_transform_edt(markers == 0, return_distances=False, return_indices=True)
    return np.where(solid, markers[tuple(nearest)], 0)


def mineral_greys(n_grains: int, minerals: Mapping[str, float], rng: np.random.Generator) -> np.ndarray:
    """Grey level per grain label (index 0 = resin): a mineral's grey plus a per-grain offset."""
    names = sorted(minerals)
    probs = np.array([minerals[m] for m in names], dtype=np.float64)
    choice = rng.choice(len(names), size=n_grains + 1, p=probs / probs.sum())
    greys = np.array([MINERAL_GREY[names[c]] for c in choice]) + rng.normal(0, 4.0, n_grains + 1)
    greys[0] = RESIN_GREY
    return greys


def render_slice(
    pore: np.ndarray,
    labels: np.ndarray,
    greys: np.ndarray,
    rng: np.random.Generator,
    image_size: int | None = None,
    noise_sigma: float = 5.0,
) -> np.ndarray:
    """A micro-CT-like 8-bit image of a 2-D pore mask with grain ``labels`` and their ``greys``.

    Resin-filled pores dark, grains in mineral greys with light texture, low-frequency shading,
    PSF blur (sigma 0.7 px) and Gaussian noise (``noise_sigma`` grey levels); resampled to
    ``image_size`` before the shading and noise.
    """
    pore = np.asarray(pore, dtype=bool)
    grey = np.where(pore, RESIN_GREY, greys[labels])
    grey = grey + np.where(pore, 2.0, 5.0) * smooth_noise(pore.shape, 0.8, rng)
    grey = ndi.gaussian_filter(grey, 0.7)
    if image_size is not None and image_size != pore.shape[0]:
        resized = Image.fromarray(grey.astype(np.float32), mode="F").resize(
            (image_size, image_size), Image.Resampling.LANCZOS
        )
        grey = np.asarray(resized, dtype=np.float64)
    grey = grey + 6.0 * smooth_noise(grey.shape, grey.shape[0] / 6, rng)
    grey = grey + rng.normal(0, noise_sigma, grey.shape)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def _central(plane: np.ndarray, crop: int | None) -> tuple[slice, slice]:
    """The index of a plane's central ``crop`` × ``crop`` square (the whole plane for None)."""
    if crop is None:
        return (slice(None), slice(None))
    starts = [(side - crop) // 2 for side in plane.shape]
    return tuple(slice(start, start + crop) for start in starts)


def render_slices(
    rock: Rock,
    positions: Sequence[int],
    minerals: Mapping[str, float],
    seed: np.random.SeedSequence,
    image_size: int | None = None,
    crop: int | None = None,
    noise_sigma: float = 5.0,
) -> tuple[np.ndarray, ...]:
    """Slices normal to the flow axis, each its central ``crop`` × ``crop`` voxels (default: whole);
    3-D grain labels keep a grain's mineral across slices."""
    table_seed, *slice_seeds = seed.spawn(len(positions) + 1)
    table_rng = np.random.default_rng(table_seed)
    table = None if rock.grains is None else mineral_greys(int(rock.grains.max()), minerals, table_rng)
    images = []
    for z, slice_seed in zip(positions, slice_seeds, strict=True):
        rng = np.random.default_rng(slice_seed)
        plane = np.take(rock.pore, z, axis=FLOW_AXIS)
        window = _central(plane, crop)
        pore = plane[window]
        if rock.grains is None:
            labels = grain_labels(~pore)
            greys = mineral_greys(int(labels.max()), minerals, rng)
        else:
            labels, greys = np.take(rock.grains, z, axis=FLOW_AXIS)[window], table
        images.append(render_slice(pore, labels, greys, rng, image_size, noise_sigma))
    return tuple(images)

"""Volume generators of the synthetic rocks: boolean 3-D arrays, True on pore voxels.

Each takes the volume shape, its parameters and a ``np.random.Generator``; porespy (the ``synth``
extra) is imported only by the generators built on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

# the flow axis of every generated volume: slices are cut normal to it, permeability measured along it
FLOW_AXIS = 0


class Rock(NamedTuple):
    """A generated volume: ``pore`` (True = pore) and grain labels (0 on pores) or None."""

    pore: np.ndarray
    grains: np.ndarray | None


def legacy_seed(rng: np.random.Generator) -> int:
    """A 32-bit seed for porespy generators, which seed numpy's (and numba's) global state."""
    return int(rng.integers(0, 2**32 - 1))


def _uniform_rank(field_: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1): thresholding at q then gives a pore fraction of exactly q."""
    flat = np.argsort(field_, axis=None, kind="stable")
    ranks = np.empty(field_.size, dtype=np.float64)
    ranks[flat] = np.arange(field_.size) / field_.size
    return ranks.reshape(field_.shape)


def smooth_noise(shape: Sequence[int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian random field with unit standard deviation."""
    noise = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return noise / noise.std()


def _remove_thin_pores(pore: np.ndarray) -> np.ndarray:
    """Opening with a 6-neighbour element: one-voxel sheets and lines are not resolvable by CT."""
    return ndi.binary_opening(pore, structure=ndi.generate_binary_structure(pore.ndim, 1))


def _voronoi_distances(
    shape: Sequence[int], cell_size: float, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Distances to and indices of the ``k`` nearest of Poisson seeds, one per ``cell_size``³."""
    from scipy.spatial import cKDTree

    margin = 2 * cell_size
    box = np.array(shape, dtype=np.float64) + 2 * margin
    n_seeds = int(np.prod(box) / cell_size**3)
    seeds = rng.uniform(0, 1, size=(n_seeds, len(shape))) * box - margin
    grid = np.indices(shape, dtype=np.float32).reshape(len(shape), -1).T
    dist, index = cKDTree(seeds).query(grid, k=k)
    return dist.reshape(*shape, k), index.reshape(*shape, k)


def voronoi_sandstone(
    shape: Sequence[int],
    porosity: float,
    grain_size: float,
    junction_weight: float,
    rng: np.random.Generator,
) -> Rock:
    """Voronoi grains with pores along faces and (weighted) at triple lines.

    Distances to the nearest three seeds: ``d2 - d1`` is small on cell faces, ``d3 - d1`` at triple
    lines where real intergranular pores sit. Smoothing the score rounds the grain outlines.
    """
    shape = tuple(shape)
    dist, index = _voronoi_distances(shape, grain_size, 3, rng)
    score = (dist[..., 1] - dist[..., 0]) + junction_weight * (dist[..., 2] - dist[..., 0])
    score = score + 0.05 * grain_size * smooth_noise(shape, 3.0, rng)
    score = ndi.gaussian_filter(score, 1.0)
    pore = _remove_thin_pores(_uniform_rank(score) < porosity)
    return Rock(pore, index[..., 0] + 1)


def crystal_mosaic(shape: Sequence[int], size: float, rng: np.random.Generator) -> np.ndarray:
    """Voronoi cells as crystal labels (from 1) for matrix rocks without resolvable grains."""
    _, index = _voronoi_distances(shape, size, 1, rng)
    return index[..., 0] + 1


def cemented_packing(shape: Sequence[int], radius: int, cement: float, rng: np.random.Generator) -> Rock:
    """Pseudo-gravity sphere packing whose pores shrink by ``cement`` voxels of grain overgrowth."""
    import porespy as ps

    # porespy stops after ``maxiter`` spheres (1000 by default), which leaves the top of a large
    # volume empty: allow as many spheres as the volume could hold.
    most_spheres = int(np.prod(shape) / (4 / 3 * np.pi * radius**3)) + 1
    grains = ps.generators.pseudo_gravity_packing(
        shape=list(shape), r=radius, edges="extended", maxiter=most_spheres, seed=legacy_seed(rng)
    )
    pore_depth = ndi.distance_transform_edt(grains == 0)
    return Rock(_remove_thin_pores(pore_depth > cement), None)


def polydisperse_packing(
    shape: Sequence[int],
    porosity: float,
    mean_radius: float,
    radius_spread: float,
    rng: np.random.Generator,
) -> Rock:
    """Overlapping spheres with normally distributed radii (porespy marks the spheres as solid)."""
    import porespy as ps
    from scipy import stats

    dist = stats.norm(loc=mean_radius, scale=radius_spread)
    pore = ps.generators.polydisperse_spheres(
        list(shape), porosity=porosity, dist=dist, nbins=5, r_min=3, seed=legacy_seed(rng)
    )
    return Rock(_remove_thin_pores(pore), None)


def overlapping_grains(shape: Sequence[int], porosity: float, radius: int, rng: np.random.Generator) -> Rock:
    """Overlapping equal spheres as grains; their pores stay connected down to low porosity."""
    import porespy as ps

    pore = ps.generators.overlapping_spheres(list(shape), r=radius, porosity=porosity, seed=legacy_seed(rng))
    # no opening here: the throats of a tight overlapping pack are one to two voxels wide
    return Rock(pore, None)


def blobs(
    shape: Sequence[int],
    porosity: float,
    feature_size: float,
    crystal_size: float,
    rng: np.random.Generator,
) -> Rock:
    """porespy ``blobs`` (smoothing length in voxels) as vugs in a crystal mosaic."""
    import porespy as ps

    blobiness = float(np.mean(shape)) / (40.0 * feature_size)
    pore = ps.generators.blobs(list(shape), porosity=porosity, blobiness=blobiness, seed=legacy_seed(rng))
    pore = _remove_thin_pores(pore)
    return Rock(pore, np.where(pore, 0, crystal_mosaic(shape, crystal_size, rng)))


def fractured_matrix(
    shape: Sequence[int],
    matrix_porosity: float,
    aperture: float,
    roughness: float,
    dip: float,
    crystal_size: float,
    rng: np.random.Generator,
) -> Rock:
    """Isolated micro-pores plus one rough fracture that contains the flow axis.

    The fracture plane's normal lies in the slice plane (angle ``dip``), so the fracture spans the
    volume along the flow axis and shows as a crack in every slice; smooth noise makes its walls
    rough and its aperture variable.
    """
    shape = tuple(shape)
    matrix = _uniform_rank(smooth_noise(shape, 1.2, rng)) < matrix_porosity
    coords = np.indices(shape, dtype=np.float64)
    centre = (np.array(shape[1:]) - 1) / 2 + rng.uniform(-0.15, 0.15, 2) * np.array(shape[1:])
    offset = np.cos(dip) * (coords[1] - centre[0]) + np.sin(dip) * (coords[2] - centre[1])
    wall = offset + roughness * 2.0 * smooth_noise(shape, 6.0, rng)
    half_aperture = aperture / 2 * (1 + 0.3 * smooth_noise(shape, 8.0, rng))
    pore = matrix | (np.abs(wall) < np.maximum(half_aperture, 0.5))
    return Rock(pore, np.where(pore, 0, crystal_mosaic(shape, crystal_size, rng)))


GENERATORS: dict[str, Callable[..., Rock]] = {
    "voronoi_sandstone": voronoi_sandstone,
    "cemented_packing": cemented_packing,
    "polydisperse_packing": polydisperse_packing,
    "overlapping_grains": overlapping_grains,
    "blobs": blobs,
    "fractured_matrix": fractured_matrix,
}


def make_volume(
    generator: str,
    shape: Sequence[int],
    params: Mapping[str, float | int],
    rng: np.random.Generator,
) -> Rock:
    """A volume from one of :data:`GENERATORS`; ``pore`` as a contiguous boolean array."""
    rock = GENERATORS[generator](shape, **params, rng=rng)
    return Rock(np.ascontiguousarray(rock.pore, dtype=bool), rock.grains)

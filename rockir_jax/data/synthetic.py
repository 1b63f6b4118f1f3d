"""Synthetic digital rocks: 3-D pore/solid volumes, physics-derived metadata, micro-CT-like slices.

Each *reservoir* is one volume-generator family with its own parameter ranges, voxel size and
mineral mix; each *sample* is one volume drawn with its own seed. Porosity is the pore-voxel
fraction and permeability comes from pore-network extraction (``porespy.networks.snow2``) plus an
OpenPNM ``StokesFlow`` on the spanning cluster, so the metadata is physics, not a formula of the
generator's knobs.
Slices perpendicular to the flow axis are rendered as 8-bit micro-CT-like images.

Everything is deterministic from a master seed: a sample's randomness comes from
``np.random.SeedSequence(master_seed, spawn_key=(reservoir, sample, attempt))``.

porespy and openpnm (the ``synth`` extra) are imported only by the functions that need them, so the
rendering, naming and porosity helpers work with numpy, scipy and pillow alone.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

MILLIDARCY_M2 = 9.869233e-16
FLOW_AXIS = 0
BOUNDARY_WIDTH = 3
RESIN_GREY = 62.0
MINERAL_GREY = {
    "quartz": 134.0,
    "feldspar": 146.0,
    "clay": 105.0,
    "calcite": 158.0,
    "dolomite": 170.0,
    "heavy": 235.0,
}
# Per reservoir and split: 5 train, 1 val, 2 db_test samples out of 8 (more samples keep the ratio).
SPLIT_FRACTIONS = (("train", 5 / 8), ("val", 1 / 8), ("db_test", 2 / 8))
METADATA_COLUMNS = (
    "Image",
    "Label",
    "GI",
    "NI",
    "Size",
    "Depth",
    "Pixelsize",
    "Created_label",
    "Porosity",
    "Permeability",
    "Reservoir",
    "Generator",
    "Split",
    "Permeability_voxel2",
    "Permeability_m2",
    "Voxelsize",
    "Specific_surface",
    "Spanning_porosity",
)


@dataclass(frozen=True)
class Reservoir:
    """One generator family: parameter ranges (uniform), scan voxel size and mineral mix."""

    code: str
    generator: str
    description: str
    voxel_size_um: float
    params: Mapping[str, tuple[float, float]]
    minerals: Mapping[str, float]
    integer_params: tuple[str, ...] = field(default=())


RESERVOIRS: tuple[Reservoir, ...] = (
    Reservoir(
        code="VOR",
        generator="voronoi_sandstone",
        description="well-sorted quartz sandstone: Voronoi grains, pores at grain junctions",
        voxel_size_um=12.0,
        params={"porosity": (0.14, 0.26), "grain_size": (8.0, 11.0), "junction_weight": (0.5, 1.5)},
        minerals={"quartz": 0.78, "feldspar": 0.14, "clay": 0.06, "heavy": 0.02},
    ),
    Reservoir(
        code="PGP",
        generator="cemented_packing",
        description="cemented grain pack: pseudo-gravity sphere packing with quartz overgrowth",
        voxel_size_um=8.0,
        params={"radius": (5.0, 7.0), "cement": (1.0, 2.2)},
        minerals={"quartz": 0.6, "feldspar": 0.3, "clay": 0.08, "heavy": 0.02},
        integer_params=("radius",),
    ),
    Reservoir(
        code="PDS",
        generator="polydisperse_packing",
        description="poorly sorted sandstone: polydisperse overlapping grains",
        voxel_size_um=6.0,
        params={"porosity": (0.22, 0.32), "mean_radius": (6.0, 9.0), "radius_spread": (1.0, 2.5)},
        minerals={"quartz": 0.55, "feldspar": 0.25, "clay": 0.17, "heavy": 0.03},
    ),
    Reservoir(
        code="SPH",
        generator="overlapping_grains",
        description="tight sandstone: strongly overlapping equal grains, low porosity",
        voxel_size_um=5.0,
        params={"porosity": (0.12, 0.2), "radius": (4.0, 6.0)},
        minerals={"quartz": 0.72, "clay": 0.26, "heavy": 0.02},
        integer_params=("radius",),
    ),
    Reservoir(
        code="BLB",
        generator="blobs",
        description="vuggy carbonate: Gaussian-random-field pores in calcite/dolomite",
        voxel_size_um=4.0,
        params={"porosity": (0.2, 0.32), "feature_size": (4.0, 7.0), "crystal_size": (6.0, 10.0)},
        minerals={"calcite": 0.69, "dolomite": 0.3, "heavy": 0.01},
    ),
    Reservoir(
        code="FRC",
        generator="fractured_matrix",
        description="fractured tight carbonate: isolated micro-pores cut by a rough fracture",
        voxel_size_um=3.0,
        params={
            "matrix_porosity": (0.04, 0.09),
            "aperture": (1.6, 2.6),
            "roughness": (0.5, 1.5),
            "dip": (0.0, 3.1416),
            "crystal_size": (4.0, 7.0),
        },
        minerals={"calcite": 0.6, "dolomite": 0.25, "clay": 0.14, "heavy": 0.01},
    ),
)


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that determines a generated data set."""

    seed: int = 20231
    reservoirs: int = 6
    samples_per_reservoir: int = 8
    slices: int = 12
    image_size: int = 128
    volume_size: int = 128
    max_attempts: int = 20


class Rock(NamedTuple):
    """A generated volume: ``pore`` (True = pore) and grain labels (0 on pores) or None."""

    pore: np.ndarray
    grains: np.ndarray | None


@dataclass(frozen=True)
class SampleResult:
    """One generated sample: its slices, its CSV row and the record of how it was made."""

    name: str
    split: str
    images: tuple[np.ndarray, ...]
    row: dict[str, Any]
    record: dict[str, Any]


# --- naming and splits --------------------------------------------------------------------------


def sample_name(reservoir_code: str, sample_index: int) -> str:
    """``<reservoir 3 chars><sample 3 chars>``, e.g. ``VORS01`` for the first sample."""
    return f"{reservoir_code}S{sample_index + 1:02d}"


def slice_filename(name: str, slice_number: int) -> str:
    """The original's file naming, ``<sample>_sliceN.png``."""
    return f"{name}_slice{slice_number}.png"


def split_of(sample_index: int, samples_per_reservoir: int) -> str:
    """Split of a sample within its reservoir: first 5/8 train, next 1/8 val, the rest db_test."""
    n_train = round(SPLIT_FRACTIONS[0][1] * samples_per_reservoir)
    n_val = max(1, round(SPLIT_FRACTIONS[1][1] * samples_per_reservoir))
    if sample_index < n_train:
        return "train"
    if sample_index < n_train + n_val:
        return "val"
    return "db_test"


def slice_positions(depth: int, n_slices: int) -> list[int]:
    """Evenly spaced slice indices, away from the faces so slices are not boundary-affected."""
    margin = max(1, depth // (2 * n_slices))
    return [round(float(z)) for z in np.linspace(margin, depth - 1 - margin, n_slices)]


# --- seeds and parameters -----------------------------------------------------------------------


def sample_seed_sequence(
    master_seed: int, reservoir_index: int, sample_index: int, attempt: int
) -> np.random.SeedSequence:
    """The root of all randomness for one attempt at one sample."""
    return np.random.SeedSequence(master_seed, spawn_key=(reservoir_index, sample_index, attempt))


def draw_params(reservoir: Reservoir, rng: np.random.Generator) -> dict[str, float | int]:
    """Uniform draws from a reservoir's ranges, in a fixed (sorted) order for reproducibility."""
    params: dict[str, float | int] = {}
    for key in sorted(reservoir.params):
        low, high = reservoir.params[key]
        value = float(rng.uniform(low, high))
        params[key] = round(value) if key in reservoir.integer_params else round(value, 4)
    return params


def legacy_seed(rng: np.random.Generator) -> int:
    """A 32-bit seed for porespy generators, which seed numpy's (and numba's) global state."""
    return int(rng.integers(0, 2**32 - 1))


# --- volume generators (True = pore) ------------------------------------------------------------


def _uniform_rank(field_: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1): thresholding at q then gives a pore fraction of exactly q."""
    flat = np.argsort(field_, axis=None, kind="stable")
    ranks = np.empty(field_.size, dtype=np.float64)
    ranks[flat] = np.arange(field_.size) / field_.size
    return ranks.reshape(field_.shape)


def _smooth_noise(shape: Sequence[int], sigma: float, rng: np.random.Generator) -> np.ndarray:
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
    score = score + 0.05 * grain_size * _smooth_noise(shape, 3.0, rng)
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

    grains = ps.generators.pseudo_gravity_packing(
        shape=list(shape), r=radius, edges="extended", seed=legacy_seed(rng)
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
    matrix = _uniform_rank(_smooth_noise(shape, 1.2, rng)) < matrix_porosity
    coords = np.indices(shape, dtype=np.float64)
    centre = (np.array(shape[1:]) - 1) / 2 + rng.uniform(-0.15, 0.15, 2) * np.array(shape[1:])
    offset = np.cos(dip) * (coords[1] - centre[0]) + np.sin(dip) * (coords[2] - centre[1])
    wall = offset + roughness * 2.0 * _smooth_noise(shape, 6.0, rng)
    half_aperture = aperture / 2 * (1 + 0.3 * _smooth_noise(shape, 8.0, rng))
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


# --- physics --------------------------------------------------------------------------------------


def porosity(pore: np.ndarray) -> float:
    """Pore voxel fraction."""
    return float(np.count_nonzero(pore)) / pore.size


def specific_surface(pore: np.ndarray) -> float:
    """Pore-solid interface area per bulk volume (1/voxel), counted on voxel faces."""
    faces = sum(int(np.count_nonzero(np.diff(pore.view(np.int8), axis=a))) for a in range(pore.ndim))
    return faces / pore.size


def spanning_pores(pore: np.ndarray, axis: int = FLOW_AXIS) -> np.ndarray:
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


def permeability_voxel2(pore: np.ndarray) -> float:
    """Absolute permeability along :data:`FLOW_AXIS` in voxel², 0 when nothing percolates.

    snow2 network with boundary pores on the inlet/outlet faces, pyramids-and-cuboids hydraulic
    size factors, unit viscosity and pressure drop; ``k = Q L / A`` with L including the boundary
    pores. Clusters not touching both faces are trimmed or the linear system is singular.
    """
    import openpnm as op
    import porespy as ps
    from scipy.sparse import csgraph

    spanning = spanning_pores(pore)
    if not spanning.any():
        return 0.0
    width = [0] * pore.ndim
    width[FLOW_AXIS] = BOUNDARY_WIDTH
    try:
        snow = ps.networks.snow2(spanning, voxel_size=1, boundary_width=width)
        network = op.io.network_from_porespy(snow.network)
        network["pore.diameter"] = network["pore.equivalent_diameter"]
        network["throat.diameter"] = network["throat.inscribed_diameter"]
        network["throat.spacing"] = network["throat.total_length"]
        network.add_model(
            propname="throat.hydraulic_size_factors",
            model=op.models.geometry.hydraulic_size_factors.pyramids_and_cuboids,
        )
        network.regenerate_models()
    except KeyError:
        # snow2 fails on degenerate shapes ("diameter not found"); treat as not measurable
        return 0.0
    face = "xyz"[FLOW_AXIS]
    inlet, outlet = network.pores(f"{face}min"), network.pores(f"{face}max")
    if inlet.size == 0 or outlet.size == 0:
        return 0.0
    adjacency = network.create_adjacency_matrix(fmt="coo", triu=True)
    _, cluster = csgraph.connected_components(adjacency, directed=False)
    keep = np.intersect1d(cluster[inlet], cluster[outlet])
    if keep.size == 0:
        return 0.0
    op.topotools.trim(network, pores=np.flatnonzero(~np.isin(cluster, keep)))
    phase = op.phase.Phase(network=network)
    phase["pore.viscosity"] = 1.0
    phase.add_model(
        propname="throat.hydraulic_conductance",
        model=op.models.physics.hydraulic_conductance.generic_hydraulic,
    )
    phase.regenerate_models()
    flow = op.algorithms.StokesFlow(network=network, phase=phase)
    flow.set_value_BC(pores=network.pores(f"{face}min"), values=1.0)
    flow.set_value_BC(pores=network.pores(f"{face}max"), values=0.0)
    # SuperLU, single-threaded: deterministic, unlike a threaded Pardiso
    flow.run(solver=op.solvers.ScipySpsolve())
    rate = float(abs(flow.rate(pores=network.pores(f"{face}min"))[0]))
    length = pore.shape[FLOW_AXIS] + 2 * BOUNDARY_WIDTH
    area = pore.size / pore.shape[FLOW_AXIS]
    return rate * length / area


def voxel2_to_millidarcy(k_voxel2: float, voxel_size_um: float) -> float:
    """Permeability in mD from voxel² and the voxel edge in µm."""
    return k_voxel2 * (voxel_size_um * 1e-6) ** 2 / MILLIDARCY_M2


# --- rendering ------------------------------------------------------------------------------------


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
) -> np.ndarray:
    """A micro-CT-like 8-bit image of a 2-D pore mask with grain ``labels`` and their ``greys``.

    Resin-filled pores dark, grains in mineral greys with light texture, low-frequency shading,
    PSF blur (sigma 0.7 px) and Gaussian noise (sigma 5); resampled to ``image_size`` before the
    shading and noise.
    """
    pore = np.asarray(pore, dtype=bool)
    grey = np.where(pore, RESIN_GREY, greys[labels])
    grey = grey + np.where(pore, 2.0, 5.0) * _smooth_noise(pore.shape, 0.8, rng)
    grey = ndi.gaussian_filter(grey, 0.7)
    if image_size is not None and image_size != pore.shape[0]:
        resized = Image.fromarray(grey.astype(np.float32), mode="F").resize(
            (image_size, image_size), Image.Resampling.LANCZOS
        )
        grey = np.asarray(resized, dtype=np.float64)
    grey = grey + 6.0 * _smooth_noise(grey.shape, grey.shape[0] / 6, rng)
    grey = grey + rng.normal(0, 5.0, grey.shape)
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def render_slices(
    rock: Rock,
    positions: Sequence[int],
    minerals: Mapping[str, float],
    seed: np.random.SeedSequence,
    image_size: int | None = None,
) -> tuple[np.ndarray, ...]:
    """Slices normal to the flow axis; 3-D grain labels keep a grain's mineral across slices."""
    table_seed, *slice_seeds = seed.spawn(len(positions) + 1)
    table_rng = np.random.default_rng(table_seed)
    table = None if rock.grains is None else mineral_greys(int(rock.grains.max()), minerals, table_rng)
    images = []
    for z, slice_seed in zip(positions, slice_seeds, strict=True):
        rng = np.random.default_rng(slice_seed)
        pore = np.take(rock.pore, z, axis=FLOW_AXIS)
        if rock.grains is None:
            labels = grain_labels(~pore)
            greys = mineral_greys(int(labels.max()), minerals, rng)
        else:
            labels, greys = np.take(rock.grains, z, axis=FLOW_AXIS), table
        images.append(render_slice(pore, labels, greys, rng, image_size))
    return tuple(images)


# --- one sample -----------------------------------------------------------------------------------


def generate_sample(config: DatasetConfig, reservoir_index: int, sample_index: int) -> SampleResult:
    """Generate, measure and render one sample, redrawing volumes that do not percolate."""
    reservoir = RESERVOIRS[reservoir_index]
    shape = (config.volume_size,) * 3
    for attempt in range(config.max_attempts):
        seq = sample_seed_sequence(config.seed, reservoir_index, sample_index, attempt)
        param_seq, volume_seq, render_seq = seq.spawn(3)
        params = draw_params(reservoir, np.random.default_rng(param_seq))
        rock = make_volume(reservoir.generator, shape, params, np.random.default_rng(volume_seq))
        k_voxel2 = permeability_voxel2(rock.pore)
        if k_voxel2 > 0:
            break
    else:
        raise RuntimeError(
            f"{sample_name(reservoir.code, sample_index)}: no percolating volume in "
            f"{config.max_attempts} attempts"
        )
    positions = slice_positions(shape[FLOW_AXIS], config.slices)
    images = render_slices(rock, positions, reservoir.minerals, render_seq, config.image_size)
    pore = rock.pore
    name = sample_name(reservoir.code, sample_index)
    split = split_of(sample_index, config.samples_per_reservoir)
    pixel_size_um = reservoir.voxel_size_um * config.volume_size / config.image_size
    row = {
        "Image": name,
        "Label": reservoir.code,
        "GI": reservoir_index + 1,
        "NI": sample_index + 1,
        "Size": config.image_size,
        "Depth": config.volume_size,
        "Pixelsize": pixel_size_um,
        "Created_label": name,
        "Porosity": porosity(pore),
        "Permeability": voxel2_to_millidarcy(k_voxel2, reservoir.voxel_size_um),
        "Reservoir": reservoir.code,
        "Generator": reservoir.generator,
        "Split": split,
        "Permeability_voxel2": k_voxel2,
        "Permeability_m2": k_voxel2 * (reservoir.voxel_size_um * 1e-6) ** 2,
        "Voxelsize": reservoir.voxel_size_um,
        "Specific_surface": specific_surface(pore) / (reservoir.voxel_size_um * 1e-6),
        "Spanning_porosity": porosity(spanning_pores(pore)),
    }
    record = {
        "sample": name,
        "reservoir": reservoir.code,
        "reservoir_index": reservoir_index,
        "sample_index": sample_index,
        "split": split,
        "generator": reservoir.generator,
        "attempt": attempt,
        "spawn_key": [reservoir_index, sample_index, attempt],
        "params": params,
        "volume_shape": list(shape),
        "flow_axis": FLOW_AXIS,
        "slice_positions": positions,
        "voxel_size_um": reservoir.voxel_size_um,
    }
    return SampleResult(name=name, split=split, images=images, row=row, record=record)


# --- the data set -------------------------------------------------------------------------------


def sample_jobs(config: DatasetConfig) -> list[tuple[int, int]]:
    """(reservoir, sample) index pairs of a data set, in file order."""
    if not 1 <= config.reservoirs <= len(RESERVOIRS):
        raise ValueError(f"reservoirs must be in 1..{len(RESERVOIRS)}, got {config.reservoirs}")
    return [(r, s) for r in range(config.reservoirs) for s in range(config.samples_per_reservoir)]


# one thread per process: the pool already uses every core
SINGLE_THREAD_ENV = {
    var: "1" for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
}


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _generate_job(args: tuple[DatasetConfig, int, int]) -> SampleResult:
    config, reservoir_index, sample_index = args
    import logging

    # porespy/openpnm log warnings and progress bars per call; the caller shows its own progress
    logging.getLogger().setLevel(logging.ERROR)
    try:
        import porespy as ps

        ps.settings.tqdm["disable"] = True
    except ImportError:
        pass
    return generate_sample(config, reservoir_index, sample_index)


def generate_samples(config: DatasetConfig, workers: int = 2) -> Iterator[SampleResult]:
    """Yield every sample as it finishes (order varies; each result is deterministic)."""
    jobs = [(config, r, s) for r, s in sample_jobs(config)]
    if workers <= 1:
        yield from map(_generate_job, jobs)
        return
    # spawn, not fork: numba and MKL thread pools do not survive a fork of a threaded parent.
    # Spawned workers read the thread limits from the environment when they import numpy.
    context = multiprocessing.get_context("spawn")
    with _environment(SINGLE_THREAD_ENV), context.Pool(workers) as pool:
        yield from pool.imap_unordered(_generate_job, jobs)


def write_sample_images(out: Path, result: SampleResult) -> list[Path]:
    """Write a sample's slices in the original layout (db_test is flat)."""
    folder = out / result.split if result.split == "db_test" else out / result.split / result.name
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, image in enumerate(result.images):
        path = folder / slice_filename(result.name, number)
        Image.fromarray(image, mode="L").save(path, format="PNG", optimize=True)
        paths.append(path)
    return paths


def metadata_frame(results: Sequence[SampleResult]) -> pd.DataFrame:
    """The metadata CSV's rows, sorted by sample name."""
    rows = [r.row for r in sorted(results, key=lambda r: r.name)]
    return pd.DataFrame(rows, columns=list(METADATA_COLUMNS))


def write_metadata(out: Path, results: Sequence[SampleResult]) -> Path:
    """``metadata.csv`` with full float precision, so a regeneration can be compared exactly."""
    path = out / "metadata.csv"
    metadata_frame(results).to_csv(path, index=False, float_format="%.10g")
    return path


def write_generation_record(
    out: Path, config: DatasetConfig, results: Sequence[SampleResult], command: str
) -> Path:
    """``generation.json``: the config, the command and every sample's parameters and seed key."""
    path = out / "generation.json"
    record = {
        "config": config.__dict__,
        "command": command,
        "seed_scheme": "np.random.SeedSequence(seed, spawn_key=(reservoir, sample, attempt))",
        "reservoirs": [
            {
                "code": r.code,
                "generator": r.generator,
                "description": r.description,
                "voxel_size_um": r.voxel_size_um,
                "params": {k: list(v) for k, v in r.params.items()},
                "minerals": dict(r.minerals),
            }
            for r in RESERVOIRS[: config.reservoirs]
        ],
        "samples": [r.record for r in sorted(results, key=lambda r: r.name)],
    }
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def contact_sheet(results: Sequence[SampleResult], path: Path, columns: int = 6) -> Path:
    """The middle slice of each reservoir's first ``columns`` samples, labelled, a row a reservoir."""
    ordered = sorted(results, key=lambda r: (r.row["GI"], r.row["NI"]))
    by_reservoir: dict[str, list[SampleResult]] = {}
    for result in ordered:
        by_reservoir.setdefault(result.row["Reservoir"], []).append(result)
    columns = min(columns, max(len(v) for v in by_reservoir.values()))
    tile, label = ordered[0].images[0].shape[0], 12
    sheet = Image.new("L", (columns * tile, len(by_reservoir) * (tile + label)), 255)
    draw = ImageDraw.Draw(sheet)
    for row, code in enumerate(by_reservoir):
        for col, result in enumerate(by_reservoir[code][:columns]):
            x, y = col * tile, row * (tile + label)
            image = result.images[len(result.images) // 2]
            sheet.paste(Image.fromarray(image, mode="L"), (x, y + label))
            text = f"{result.name} {result.row['Porosity']:.2f} {result.row['Permeability']:.3g}mD"
            draw.text((x + 2, y), text, fill=0)
    sheet.save(path, format="PNG", optimize=True)
    return path


COLUMN_DOCS = {
    "Image": "sample name (the original matched it against file stems)",
    "Label": "reservoir code",
    "GI": "reservoir number (1-based)",
    "NI": "sample number within its reservoir (1-based)",
    "Size": "slice image side in pixels",
    "Depth": "volume extent along the flow axis (slices are cut normal to it), voxels",
    "Pixelsize": "image pixel size in µm (voxel size * volume size / image size)",
    "Created_label": "sample name = folder name, `<reservoir 3 chars><sample 3 chars>`",
    "Porosity": "pore voxel fraction of the whole volume",
    "Permeability": "absolute permeability along the flow axis in mD (1 mD = 9.869233e-16 m²)",
    "Reservoir": "reservoir code (same as Label)",
    "Generator": "volume generator family",
    "Split": "train, val or db_test",
    "Permeability_voxel2": "permeability in voxel² (= Permeability_m2 / (Voxelsize·1e-6)²)",
    "Permeability_m2": "permeability in m²",
    "Voxelsize": "voxel edge of the 3-D volume in µm",
    "Specific_surface": "pore-solid interface area per bulk volume in 1/m (voxel-face count)",
    "Spanning_porosity": "pore fraction in clusters face-connected from inlet to outlet",
}


def write_readme(
    out: Path,
    config: DatasetConfig,
    results: Sequence[SampleResult],
    command: str,
    wall_s: float,
    workers: int,
) -> Path:
    """``README.md``: how the set was made, per-reservoir ranges, split counts and column units."""
    frame = metadata_frame(results)
    lines = [
        "# Synthetic digital rocks",
        "",
        "Generated by `scripts/make_synthetic_rocks.py` (`rockir_jax.data.synthetic`, extra `synth`):",
        "",
        f"    {command}",
        "",
        f"Seed {config.seed}; {len(results)} samples x {config.slices} slices of "
        f"{config.image_size}² px from {config.volume_size}³ volumes; generation took "
        f"{wall_s / 60:.1f} min with {workers} worker processes. `generation.json` holds every "
        "sample's parameters, seed key and slice positions; rerunning the command gives "
        "identical PNGs and `metadata.csv`.",
        "",
        "Each reservoir is one generator family; each sample one volume (True = pore). Porosity is "
        "the pore voxel fraction; permeability comes from a snow2 pore network and an OpenPNM "
        "Stokes flow along the volume's first axis on the inlet-outlet spanning cluster "
        "(non-percolating draws are redrawn). Slices are cut normal to the flow axis at evenly "
        "spaced positions and rendered as micro-CT-like 8-bit images (resin-filled pores dark, "
        "grain-wise mineral greys, texture, shading, PSF blur, noise).",
        "",
        "Targets as in the original: `log10(Permeability / Pixelsize**2) / 5` with Permeability in "
        "mD and Pixelsize in µm, i.e. `Permeability / Pixelsize**2` is in mD/µm² "
        "(= 1013.25 x permeability in pixel²).",
        "",
        "![overview](overview.png)",
        "",
        "| Reservoir | Generator | Rock | Voxel µm | Porosity | Permeability mD | train / val / db_test |",
        "|---|---|---|---|---|---|---|",
    ]
    for reservoir in RESERVOIRS[: config.reservoirs]:
        rows = frame[frame["Reservoir"] == reservoir.code]
        counts = [int((rows["Split"] == split).sum()) for split, _ in SPLIT_FRACTIONS]
        lines.append(
            f"| {reservoir.code} | `{reservoir.generator}` | {reservoir.description} | "
            f"{reservoir.voxel_size_um:g} | "
            f"{rows['Porosity'].min():.3f}-{rows['Porosity'].max():.3f} | "
            f"{rows['Permeability'].min():.3g}-{rows['Permeability'].max():.3g} | "
            f"{' / '.join(map(str, counts))} |"
        )
    lines += [
        "",
        "Splits are by sample (no sample in two splits): per reservoir the first 5/8 of the "
        "samples train, the next 1/8 val, the rest db_test. Layout: "
        "`train/<sample>/<sample>_sliceN.png`, "
        "`val/<sample>/…`, flat `db_test/<sample>_sliceN.png`.",
        "",
        "## metadata.csv columns",
        "",
        *[f"- `{name}`: {doc}" for name, doc in COLUMN_DOCS.items()],
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path

"""The reservoir table: one generator family per reservoir, with its ranges, voxel size and minerals."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


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

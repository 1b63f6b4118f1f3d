"""Physics of 3-D pore volumes: porosity, specific surface, spanning pores, permeability, segmentation.

A pore volume is a boolean array, True on pore voxels. Permeability comes from a snow2 pore network
and an OpenPNM Stokes flow (:func:`permeability_voxel2`; porespy and openpnm, the ``synth`` extra, are
imported only there) or from a lattice Boltzmann Stokes solve on the voxels in JAX
(:func:`permeability_lbm`).
"""

from rockir_jax.physics.flow import (
    MILLIDARCY_M2,
    permeability_voxel2,
    quiet_network_tools,
    voxel2_to_millidarcy,
)
from rockir_jax.physics.lattice_boltzmann import (
    LbmResult,
    permeability_lbm,
    permeability_voxel2_lbm,
)
from rockir_jax.physics.properties import porosity, spanning_pores, specific_surface
from rockir_jax.physics.segmentation import (
    MIN_PHASE_CONTRAST,
    Segmentation,
    otsu_threshold,
    phase_contrast,
)

__all__ = [
    "MILLIDARCY_M2",
    "MIN_PHASE_CONTRAST",
    "LbmResult",
    "Segmentation",
    "otsu_threshold",
    "permeability_lbm",
    "permeability_voxel2",
    "permeability_voxel2_lbm",
    "phase_contrast",
    "porosity",
    "quiet_network_tools",
    "spanning_pores",
    "specific_surface",
    "voxel2_to_millidarcy",
]

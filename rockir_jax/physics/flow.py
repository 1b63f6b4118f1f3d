"""Absolute permeability of a pore volume: snow2 pore network + OpenPNM Stokes flow."""

from __future__ import annotations

import numpy as np

from rockir_jax.physics.properties import spanning_pores

MILLIDARCY_M2 = 9.869233e-16
# boundary pores added on the inlet and outlet faces, in voxels
BOUNDARY_WIDTH = 3


def permeability_voxel2(pore: np.ndarray, axis: int = 0) -> float:
    """Absolute permeability along ``axis`` in voxel², 0 when nothing percolates.

    snow2 network with boundary pores on the inlet/outlet faces, pyramids-and-cuboids hydraulic
    size factors, unit viscosity and pressure drop; ``k = Q L / A`` with L including the boundary
    pores. Clusters not touching both faces are trimmed or the linear system is singular.
    """
    import openpnm as op
    import porespy as ps
    from scipy.sparse import csgraph

    pore = np.ascontiguousarray(pore, dtype=bool)
    spanning = spanning_pores(pore, axis)
    if not spanning.any():
        return 0.0
    width = [0] * pore.ndim
    width[axis] = BOUNDARY_WIDTH
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
    # porespy names the faces of array axes 0, 1, 2 x, y, z
    face = "xyz"[axis]
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
    length = pore.shape[axis] + 2 * BOUNDARY_WIDTH
    area = pore.size / pore.shape[axis]
    return rate * length / area


def quiet_network_tools() -> None:
    """Turns off porespy's per-call progress bars and the warnings porespy and openpnm log.

    Callers show their own progress; without this, every network extraction prints its own bars.
    """
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    try:
        import porespy as ps
    except ImportError:  # without the synth extra there is nothing to silence
        return
    ps.settings.tqdm["disable"] = True


def voxel2_to_millidarcy(k_voxel2: float, voxel_size_um: float) -> float:
    """Permeability in mD from voxel² and the voxel edge in µm."""
    return k_voxel2 * (voxel_size_um * 1e-6) ** 2 / MILLIDARCY_M2

"""The lattice Boltzmann permeability solver: against a float64 numpy step, closed-form flows, sharding."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from benchmark_flow import REF_C, REF_W, reference_step
from scipy import ndimage as ndi

from rockir_jax.physics import lattice_boltzmann as lbm
from rockir_jax.physics import permeability_lbm, permeability_voxel2_lbm

# The independent float64 reference step lives beside the benchmark that also times it.


def to_reference_order(f: np.ndarray) -> np.ndarray:
    order = [int(np.flatnonzero((lbm.VELOCITIES == c).all(axis=1))[0]) for c in REF_C]
    return f[order]


def random_pores(shape, seed: int, sigma: float = 1.2) -> np.ndarray:
    smooth = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma, mode="wrap")
    return smooth > np.quantile(smooth, 0.35)  # 65 % pores


@pytest.mark.parametrize(
    ("dtype", "tolerance", "devices"), [("float64", 1e-12, 1), ("float32", 2e-6, 1), ("float64", 1e-12, 8)]
)
def test_steps_match_numpy_reference(dtype, tolerance, devices):
    # on 8 devices no axis divides: 7 devices with one plane each along axis 2 (see slab_layout)
    pore = random_pores((6, 5, 7), seed=1)
    assert 0.3 < pore.mean() < 0.9
    rng = np.random.default_rng(2)
    # a random start exercises density, momentum and force terms in every direction
    f0 = REF_W[:, None, None, None] * (1 + 0.05 * rng.standard_normal((19, *pore.shape)))
    force = np.array([0.0, 0.0, 1e-3])
    f_ref = f0.copy()
    for _ in range(5):
        f_ref = reference_step(f_ref, pore, force, tau=0.9)
    initial = f0[[REF_C.tolist().index(c.tolist()) for c in lbm.VELOCITIES]]  # the module's order
    f = lbm.simulate(
        pore, 5, axis=2, force=1e-3, tau=0.9, dtype=dtype, devices=jax.devices()[:devices], initial=initial
    )
    f = to_reference_order(f)
    scale = np.abs(f_ref[:, pore] - REF_W[:, None]).max()
    assert np.abs(f[:, pore] - f_ref[:, pore]).max() < tolerance * max(scale, 1.0)


# --- closed forms ------------------------------------------------------------------------------------


def test_parallel_plates_within_2_percent():
    # gaps of 8 and 12 in one box of height 14 (one compile); periodic, two voxels along the flow
    for gap in (8, 12):
        pore = np.zeros((2, 14, 1), bool)
        pore[:, 1 : 1 + gap] = True
        result = permeability_lbm(pore, 0, mirror=False, tolerance=1e-7)
        assert result.converged, result.message
        expected = gap**2 / 12 * gap / pore.shape[1]  # superficial: the mean over the whole box
        # the error is the midpoint rule's on the exact parabola, 1/(2 gap²): 0.78 % and 0.35 %
        assert result.k_voxel2 == pytest.approx(expected, rel=0.02)
        assert result.k_voxel2 == pytest.approx(expected * (1 + 1 / (2 * gap**2)), rel=1e-4)


def tube(radius: float, width: int = 16) -> np.ndarray:
    y = np.arange(width) + 0.5 - width / 2
    disk = y[:, None] ** 2 + y[None, :] ** 2 <= radius**2
    return np.broadcast_to(disk, (2, width, width)).copy()


@pytest.mark.parametrize("radius", [4.5, 6.0])
def test_hagen_poiseuille_tube_within_5_percent(radius):
    pore = tube(radius)
    area_radius = np.sqrt(pore[0].sum() / np.pi)  # the equal-area radius of the voxelised disk
    phi = pore.mean()
    expected = phi * area_radius**2 / 8
    result = permeability_lbm(pore, 0, mirror=False, tolerance=1e-6)
    assert result.converged, result.message
    # staircase walls: measured −4.7 % (r = 4.5) and −4.2 % (r = 6)
    assert result.k_voxel2 == pytest.approx(expected, rel=0.05)


def test_viscosity_independence():
    pore = tube(6.0)
    k = [permeability_lbm(pore, 0, mirror=False, tau=tau, tolerance=1e-7).k_voxel2 for tau in (0.7, 1.5)]
    assert k[0] == pytest.approx(k[1], rel=0.01)


# Zick & Homsy (1982), "Stokes flow through periodic arrays of spheres", J. Fluid Mech. 115, 13–26,
# Table 2, simple cubic: drag per sphere 6π μ a U K(c), U the superficial velocity, c the solid fraction.
ZICK_HOMSY_SC = {
    0.027: 2.008,
    0.064: 2.810,
    0.125: 4.292,
    0.216: 7.442,
    0.343: 15.4,
    0.45: 28.1,
    0.5236: 42.1,
}


def sangani_acrivos_sc(c: float) -> float:
    """Sangani & Acrivos (1982) (Int. J. Multiphase Flow 8, 343) series for K(c), simple cubic; within
    1 % of Zick & Homsy up to c ≈ 0.22. Used only for K's slope between a table entry and the voxelised
    sphere's actual solid fraction."""
    s = c ** (1 / 3)
    return 1 / (1 - 1.7601 * s + c - 1.5593 * c**2 + 3.9799 * c ** (8 / 3) - 3.0734 * c ** (10 / 3))


def sphere_cell(size: int, solid_fraction: float) -> np.ndarray:
    """One periodic unit cell, pore = True, with the centred voxel sphere closest to ``solid_fraction``."""
    x = np.arange(size) + 0.5 - size / 2
    r2 = x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2
    shells = np.unique(r2)
    counts = np.searchsorted(np.sort(r2.ravel()), shells, side="right")
    radius2 = shells[np.argmin(np.abs(counts - solid_fraction * size**3))]
    return r2 > radius2


@pytest.mark.parametrize("table_c", [0.125, 0.216])
def test_simple_cubic_sphere_array_within_5_percent(table_c):
    # Force balance on one cell of side L: |∇p| L³ = 6π μ a U K(c), so k = μ U/|∇p| = L³ / (6π a K(c)).
    size = 24
    pore = sphere_cell(size, table_c)
    c = 1 - pore.mean()
    a = (3 * c * size**3 / (4 * np.pi)) ** (1 / 3)  # the equal-volume radius of the voxel sphere
    drag = ZICK_HOMSY_SC[table_c] * sangani_acrivos_sc(c) / sangani_acrivos_sc(table_c)
    expected = size**3 / (6 * np.pi * a * drag)
    result = permeability_lbm(pore, 0, mirror=False, tolerance=1e-6)
    assert result.converged, result.message
    assert result.k_voxel2 == pytest.approx(expected, rel=0.05)


# --- no flow, convergence, sharding ------------------------------------------------------------------


def test_all_solid_and_closed_pore_give_zero_without_iterating():
    closed = np.zeros((8, 8, 8), bool)
    closed[2:6, 2:6, 2:6] = True
    dead_end = np.zeros((8, 8, 8), bool)
    dead_end[:5, 3:5, 3:5] = True  # touches the inlet only
    for pore in (np.zeros((8, 8, 8), bool), closed, dead_end):
        result = permeability_lbm(pore, 0)
        assert (result.k_voxel2, result.steps, result.converged) == (0.0, 0, True)
        assert "spans" in result.message
        assert permeability_voxel2_lbm(pore, 0) == 0.0


def test_max_steps_reached_is_reported_not_raised():
    calls = []
    result = permeability_lbm(
        tube(6.0), 0, mirror=False, max_steps=30, check_every=10, progress=lambda s, c: calls.append((s, c))
    )
    assert not result.converged and result.steps == 30
    assert result.message.startswith("not converged: max_steps=30 reached")
    assert result.k_voxel2 > 0 and np.isfinite(result.flux_change)
    assert [s for s, _ in calls] == [10, 20, 30] and np.isnan(calls[0][1])


def test_slab_layout_rule():
    assert lbm.slab_layout((32, 12, 10), 8) == (0, 8)
    assert lbm.slab_layout((12, 8, 10), 8) == (1, 8)  # one plane per device
    assert lbm.slab_layout((12, 10, 9), 8) == (0, 6)  # no axis divides by 8 or 7: 6 devices
    assert lbm.slab_layout((12, 10, 9), 1) == (0, 1)


def test_sharded_solve_equals_one_device():
    assert jax.device_count() == 8
    pore = random_pores((6, 8, 10), seed=3)  # mirrored along 0: (12, 8, 10)
    assert 0.1 < lbm.spanning_pores(pore, 0).mean() < 0.9
    kwargs = dict(tolerance=0.0, max_steps=200, check_every=100, return_velocity=True)
    one = permeability_lbm(pore, 0, devices=jax.devices()[:1], **kwargs)
    eight = permeability_lbm(pore, 0, **kwargs)
    assert (one.devices, eight.devices) == (1, 8)  # slabs along axis 0 on one device, axis 1 on eight
    assert eight.k_voxel2 == pytest.approx(one.k_voxel2, rel=1e-6)
    assert eight.velocity.shape == (12, 8, 10)
    np.testing.assert_allclose(eight.velocity, one.velocity, rtol=0, atol=1e-6 * np.abs(one.velocity).max())


CHILD = """
import sys
import jax
import numpy as np
jax.config.update("jax_num_cpu_devices", 2)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(sys.argv[3], num_processes=2, process_id=int(sys.argv[4]))
from rockir_jax.physics import permeability_lbm
result = permeability_lbm(np.load(sys.argv[1]), 0, tolerance=0.0, max_steps=200, check_every=100,
                          return_velocity=True)
if jax.process_index() == 0:
    np.savez(sys.argv[2], k=result.k_voxel2, velocity=result.velocity, devices=result.devices)
"""


def test_two_processes_solve_like_one_device(tmp_path):
    pore = random_pores((6, 8, 10), seed=3)
    np.save(tmp_path / "pore.npy", pore)
    repo = Path(__file__).parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env |= {"JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join([str(repo), env.get("PYTHONPATH", "")])}
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        coordinator = f"127.0.0.1:{free.getsockname()[1]}"
    files = [str(tmp_path / "pore.npy"), str(tmp_path / "out.npz"), coordinator]
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, *files, str(rank)], env=env) for rank in (0, 1)
    ]
    assert [child.wait(timeout=600) for child in children] == [0, 0]
    out = np.load(tmp_path / "out.npz")
    one = permeability_lbm(
        pore,
        0,
        tolerance=0.0,
        max_steps=200,
        check_every=100,
        return_velocity=True,
        devices=jax.devices()[:1],
    )
    assert int(out["devices"]) == 4  # 2 processes × 2 devices, slabs along axis 0 of (12, 8, 10)
    assert float(out["k"]) == pytest.approx(one.k_voxel2, rel=1e-6)
    np.testing.assert_allclose(out["velocity"], one.velocity, rtol=0, atol=1e-6 * np.abs(one.velocity).max())


def test_voxel2_helper_matches_and_mirroring_keeps_a_periodic_volume():
    pore = np.zeros((2, 14, 1), bool)
    pore[:, 1:11] = True
    plain = permeability_lbm(pore, 0, mirror=False, tolerance=1e-7).k_voxel2
    assert permeability_voxel2_lbm(pore, 0) == pytest.approx(plain, rel=1e-3)

"""rockir_jax.physics against closed forms: known volumes, Hagen–Poiseuille tubes, brute-force Otsu.

The flow tests need the ``synth`` extra (porespy, openpnm).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rockir_jax.physics import (
    MILLIDARCY_M2,
    MIN_PHASE_CONTRAST,
    Segmentation,
    otsu_threshold,
    permeability_voxel2,
    phase_contrast,
    porosity,
    spanning_pores,
    specific_surface,
    voxel2_to_millidarcy,
)

# snow2 + pyramids-and-cuboids conduits approximate a voxelised tube's flow; for radii of 4-6 voxels
# the network's k is 1.1-1.3x Poiseuille's (the conduit shape factors are not a circle's), so a
# factor of 1.5 either way separates "right physics" from wrong units or a wrong flow axis (>= 4x).
POISEUILLE_FACTOR = 1.5


def disks(size: tuple[int, int], centres: list[tuple[float, float]], radius: float) -> np.ndarray:
    """A 2-D mask of disks of ``radius`` around ``centres``."""
    yy, xx = np.mgrid[: size[0], : size[1]]
    mask = np.zeros(size, dtype=bool)
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
    return mask


def tubes(
    length: int, size: tuple[int, int], centres: list[tuple[float, float]], radius: float
) -> np.ndarray:
    """Straight tubes along axis 0 of a ``(length, *size)`` box."""
    return np.broadcast_to(disks(size, centres, radius), (length, *size)).copy()


def poiseuille_voxel2(cross_section: np.ndarray, n_tubes: int = 1) -> float:
    """k = n π R⁴ / (8 A) of n circular tubes whose total area is the mask's, in a box of area A."""
    r_eff = np.sqrt(cross_section.sum() / n_tubes / np.pi)
    return n_tubes * np.pi * r_eff**4 / (8 * cross_section.size)


def needs_network_tools() -> None:
    pytest.importorskip("porespy")
    pytest.importorskip("openpnm")


# --- geometry -------------------------------------------------------------------------------------


def test_porosity_and_specific_surface_of_known_volumes() -> None:
    pore = np.zeros((4, 4, 4), dtype=bool)
    pore[:, :, :1] = True
    assert porosity(pore) == pytest.approx(16 / 64)
    single = np.zeros((3, 3, 3), dtype=bool)
    single[1, 1, 1] = True
    assert specific_surface(single) == pytest.approx(6 / 27)


def test_spanning_pores_uses_face_connectivity() -> None:
    tube = np.zeros((6, 5, 5), dtype=bool)
    tube[:, 2, 2] = True
    assert spanning_pores(tube).sum() == 6
    assert not spanning_pores(tube, axis=1).any()
    dead_end = tube.copy()
    dead_end[3, 2, 2] = False
    assert not spanning_pores(dead_end).any()
    # voxels touching only along an edge: no flow path
    staircase = np.zeros((4, 4, 4), dtype=bool)
    for i in range(4):
        staircase[i, i, 0] = True
    assert not spanning_pores(staircase).any()


def test_unit_conversion() -> None:
    # 1 voxel² at 1 µm is 1 µm² = 1e-12 m²; 1 D = 9.869233e-13 m², so 1013.25 mD
    assert voxel2_to_millidarcy(1.0, 1.0) == pytest.approx(1e-12 / 9.869233e-16, rel=1e-12)
    assert voxel2_to_millidarcy(2.0, 3.0) == pytest.approx(2.0 * 9e-12 / MILLIDARCY_M2, rel=1e-12)


# --- segmentation ---------------------------------------------------------------------------------


def brute_force_otsu(values: np.ndarray) -> float:
    """The split between consecutive grey levels that maximises the between-class variance."""
    values = values.astype(np.float64)
    levels = np.unique(values)
    best, best_t = -1.0, None
    for low, high in itertools.pairwise(levels):
        t = (low + high) / 2
        dark, bright = values[values < t], values[values > t]
        w0, w1 = dark.size / values.size, bright.size / values.size
        between = w0 * w1 * (dark.mean() - bright.mean()) ** 2
        if between > best:
            best, best_t = between, t
    return float(best_t)


def test_otsu_matches_brute_force_on_integer_data() -> None:
    rng = np.random.default_rng(0)
    pores = rng.normal(60, 12, 3000)
    grains = rng.normal(150, 20, 7000)
    values = np.clip(np.concatenate([pores, grains]), 0, 255).astype(np.uint8)
    threshold = otsu_threshold(values)
    # grey levels with no voxels tie with their neighbours: the brute force picks the first split
    assert np.count_nonzero(values <= threshold) == np.count_nonzero(values <= brute_force_otsu(values))
    assert 60 < threshold < 150


def test_otsu_of_float_data_separates_two_phases() -> None:
    values = np.concatenate([np.full(100, 0.2), np.full(300, 0.9)]).astype(np.float32)
    threshold = otsu_threshold(values)
    assert 0.2 < threshold < 0.9
    with pytest.raises(ValueError, match="constant intensity"):
        otsu_threshold(np.full(10, 7, np.uint16))


def test_segmentation_rules() -> None:
    values = np.array([10, 20, 30, 40])
    dark = Segmentation("threshold", 20)
    np.testing.assert_array_equal(dark.pore_mask(values, dark.threshold(values)), [True, True, False, False])
    bright = Segmentation("threshold", 30, pores="bright")
    np.testing.assert_array_equal(bright.pore_mask(values, 30), [False, False, True, True])
    label = Segmentation("label", 30)
    np.testing.assert_array_equal(label.pore_mask(values, 30), [False, False, True, False])
    assert Segmentation().describe(97.5) == "otsu threshold 97.5, dark pores"
    with pytest.raises(ValueError, match="needs a value"):
        Segmentation("threshold")


# --- flow -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("radius", [4, 6])
def test_tube_permeability_matches_hagen_poiseuille(radius: int) -> None:
    needs_network_tools()
    pore = tubes(48, (32, 32), [(15.5, 15.5)], radius)
    analytic = poiseuille_voxel2(pore[0])
    assert analytic / POISEUILLE_FACTOR < permeability_voxel2(pore) < analytic * POISEUILLE_FACTOR


@pytest.mark.parametrize("axis", [1, 2])
def test_permeability_along_other_axes(axis: int) -> None:
    needs_network_tools()
    along_0 = tubes(40, (32, 32), [(15.5, 15.5)], 5)
    pore = np.moveaxis(along_0, 0, axis)
    analytic = poiseuille_voxel2(along_0[0])
    assert analytic / POISEUILLE_FACTOR < permeability_voxel2(pore, axis=axis) < analytic * POISEUILLE_FACTOR
    # no tube crosses the box along the other axes
    assert permeability_voxel2(pore, axis=0) == 0.0


def test_tube_bundle_porosity_and_permeability() -> None:
    needs_network_tools()
    size, radius, length = (40, 40), 4, 40
    centres = [(9.5, 9.5), (9.5, 29.5), (29.5, 9.5), (29.5, 29.5)]
    bundle = tubes(length, size, centres, radius)
    single = tubes(length, size, centres[:1], radius)
    # porosity of parallel tubes is their cross-section's area fraction, exactly
    assert porosity(bundle) == disks(size, centres, radius).sum() / (size[0] * size[1])
    assert porosity(bundle) == pytest.approx(len(centres) * porosity(single))
    k_bundle = permeability_voxel2(bundle)
    analytic = poiseuille_voxel2(bundle[0], n_tubes=len(centres))
    assert analytic / POISEUILLE_FACTOR < k_bundle < analytic * POISEUILLE_FACTOR
    # parallel conductors add: n tubes carry n times the flow of one
    assert k_bundle == pytest.approx(len(centres) * permeability_voxel2(single), rel=0.05)


def test_impermeable_volumes_give_zero() -> None:
    needs_network_tools()
    assert permeability_voxel2(np.zeros((32, 32, 32), dtype=bool)) == 0.0
    dead_end = np.zeros((32, 32, 32), dtype=bool)
    dead_end[:20, 10:20, 10:20] = True
    assert permeability_voxel2(dead_end) == 0.0


def test_phase_contrast_tells_two_phases_from_the_noise_of_one() -> None:
    rng = np.random.default_rng(0)
    noise = rng.normal(100.0, 5.0, 200_000)
    # One phase split at its mean: half-normal means ±σ·sqrt(2/π), within-class std σ·sqrt(1 − 2/π).
    one_phase = 2 * np.sqrt(2 / np.pi) / np.sqrt(1 - 2 / np.pi)
    assert phase_contrast(noise, 100.0) == pytest.approx(one_phase, rel=0.02)
    assert phase_contrast(noise, otsu_threshold(noise)) < MIN_PHASE_CONTRAST
    two_phases = np.concatenate([rng.normal(60.0, 5.0, 20_000), rng.normal(160.0, 5.0, 180_000)])
    assert phase_contrast(two_phases, otsu_threshold(two_phases)) == pytest.approx(100 / 5, rel=0.02)

"""Tests of the synthetic digital-rock generator and of the committed default data set.

The data-set and numpy-only tests always run; regeneration needs the ``synth`` extra.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rockir_jax.data.layout import SPLITS, scan_split, slice_filename
from rockir_jax.physics import MILLIDARCY_M2, porosity, spanning_pores
from rockir_jax.synth import dataset, render, volumes
from rockir_jax.synth.reservoirs import RESERVOIRS

DATASET = Path(__file__).resolve().parents[1] / "datasets" / "synthetic_rocks"
NAME = re.compile(r"^[A-Z0-9]{3}[A-Z0-9]{3}_slice\d+\.png$")


@pytest.fixture(scope="module")
def metadata() -> pd.DataFrame:
    return pd.read_csv(DATASET / "metadata.csv")


@pytest.fixture(scope="module")
def generation() -> dict:
    return json.loads((DATASET / "generation.json").read_text())


def _sample_files(split: str) -> dict[str, list[Path]]:
    """Slice files per sample name as found on disk."""
    root = DATASET / split
    paths = root.glob("*.png") if split == "db_test" else root.glob("*/*.png")
    files: dict[str, list[Path]] = {}
    for path in sorted(paths):
        files.setdefault(path.name.split("_slice")[0], []).append(path)
    return files


# --- the committed data set ---------------------------------------------------------------------


def test_committed_set_matches_metadata(metadata: pd.DataFrame, generation: dict) -> None:
    slices = generation["config"]["slices"]
    on_disk = {split: _sample_files(split) for split in ("train", "val", "db_test")}
    seen: dict[str, str] = {}
    for split, samples in on_disk.items():
        assert samples, f"empty split {split}"
        for name, paths in samples.items():
            assert name not in seen, f"{name} in both {seen.get(name)} and {split}"
            seen[name] = split
            assert len(paths) == slices, name
            assert all(NAME.match(p.name) for p in paths), [p.name for p in paths]
            if split != "db_test":
                assert {p.parent.name for p in paths} == {name}
    rows = metadata.set_index("Created_label")
    assert set(seen) == set(rows.index)
    assert metadata["Created_label"].is_unique
    for name, split in seen.items():
        assert rows.loc[name, "Split"] == split
        assert rows.loc[name, "Image"] == name
        assert name[:3] == rows.loc[name, "Reservoir"]


def test_committed_metadata_values(metadata: pd.DataFrame) -> None:
    assert list(metadata.columns) == list(dataset.METADATA_COLUMNS)
    assert metadata[list(dataset.METADATA_COLUMNS)].notna().all().all()
    assert metadata["Porosity"].between(0.05, 0.35).all()
    assert (metadata["Permeability"] > 0).all()
    assert (metadata["Pixelsize"] > 0).all()
    # metadata informative across reservoirs: permeability spans orders of magnitude
    log_k = np.log10(metadata["Permeability"] / metadata["Pixelsize"] ** 2)
    assert log_k.max() - log_k.min() > 2
    k_m2 = metadata["Permeability_voxel2"] * (metadata["Voxelsize"] * 1e-6) ** 2
    np.testing.assert_allclose(metadata["Permeability_m2"], k_m2, rtol=1e-8)
    np.testing.assert_allclose(metadata["Permeability"], k_m2 / MILLIDARCY_M2, rtol=1e-8)
    assert (metadata["Spanning_porosity"] <= metadata["Porosity"]).all()


def test_committed_images_are_8bit_128(metadata: pd.DataFrame) -> None:
    for path in sorted(DATASET.glob("**/*_slice*.png")):
        with Image.open(path) as image:
            assert image.mode == "L", path
            assert image.size == (128, 128), path


def test_committed_generation_record(metadata: pd.DataFrame, generation: dict) -> None:
    records = {s["sample"]: s for s in generation["samples"]}
    assert set(records) == set(metadata["Created_label"])
    for row in metadata.itertuples():
        record = records[row.Created_label]
        assert record["split"] == row.Split
        assert record["generator"] == row.Generator
        assert len(record["slice_positions"]) == generation["config"]["slices"]


# --- numpy-only helpers ---------------------------------------------------------------------------


def test_naming_and_splits() -> None:
    assert dataset.sample_name("VOR", 0) == "VORS01"
    assert slice_filename("VORS01", 3) == "VORS01_slice3.png"
    splits = [dataset.split_of(i, 8) for i in range(8)]
    assert splits == ["train"] * 5 + ["val"] + ["db_test"] * 2


def test_grain_labels_separate_grains() -> None:
    yy, xx = np.mgrid[:40, :40]
    solid = ((yy - 20) ** 2 + (xx - 10) ** 2 < 64) | ((yy - 20) ** 2 + (xx - 30) ** 2 < 64)
    labels = render.grain_labels(solid)
    assert (labels[~solid] == 0).all()
    assert labels[20, 10] != labels[20, 30]
    assert len(np.unique(labels[solid])) == 2


def test_render_slice_is_ct_like_and_deterministic() -> None:
    pore = np.zeros((64, 64), dtype=bool)
    pore[20:40, 20:40] = True
    labels = render.grain_labels(~pore)
    greys = render.mineral_greys(int(labels.max()), {"quartz": 1.0}, np.random.default_rng(0))
    image = render.render_slice(pore, labels, greys, np.random.default_rng(1))
    again = render.render_slice(pore, labels, greys, np.random.default_rng(1))
    assert image.dtype == np.uint8 and image.shape == (64, 64)
    np.testing.assert_array_equal(image, again)
    # resin-filled pores dark, quartz grains mid-grey, as on the real slices
    pore_grey, grain_grey = image[25:35, 25:35].mean(), image[:10, :10].mean()
    assert abs(pore_grey - render.RESIN_GREY) < 15
    assert abs(grain_grey - render.MINERAL_GREY["quartz"]) < 15
    assert grain_grey - pore_grey > 40
    resized = render.render_slice(pore, labels, greys, np.random.default_rng(1), 32)
    assert resized.shape == (32, 32)


def test_numpy_generators_hit_their_porosity() -> None:
    rng = np.random.default_rng(3)
    rock = volumes.voronoi_sandstone((48, 48, 48), 0.2, 8.0, 1.0, rng)
    assert rock.grains is not None and rock.grains.shape == rock.pore.shape
    # the opening removes unresolvable sheets, so a little porosity is lost
    assert 0.12 < porosity(rock.pore) <= 0.2
    rock = volumes.fractured_matrix((48, 48, 48), 0.05, 2.0, 1.0, 0.5, 5.0, rng)
    assert spanning_pores(rock.pore).any()


def test_sample_seeds_are_independent_and_reproducible() -> None:
    a = dataset.sample_seed_sequence(1, 0, 0, 0).generate_state(4)
    assert (a == dataset.sample_seed_sequence(1, 0, 0, 0).generate_state(4)).all()
    for key in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        assert (a != dataset.sample_seed_sequence(1, *key).generate_state(4)).any()


# --- regeneration (synth extra) -----------------------------------------------------------------


def _assert_rows_equal(row: dict, expected: dict) -> None:
    for column, value in row.items():
        if isinstance(value, str):
            assert expected[column] == value, column
        else:
            # The images are bit-identical; the flow solve's last digits depend on the SciPy build.
            assert expected[column] == pytest.approx(value, rel=1e-5), column


def test_regeneration_reproduces_the_bundled_sample(metadata: pd.DataFrame, generation: dict) -> None:
    pytest.importorskip("porespy")
    config = dataset.DatasetConfig(**generation["config"])
    # The cheapest volume to rebuild: a db_test sample of overlapping grains. Its flow is not solved
    # again (30-80 s at 256³); the CSV's permeability goes in, and its unit conversions are checked.
    record = next(
        s for s in generation["samples"] if s["generator"] == "overlapping_grains" and s["split"] == "db_test"
    )
    row = metadata[metadata["Created_label"] == record["sample"]].iloc[0]
    result = dataset.regenerate_sample(config, record, k_voxel2=row["Permeability_voxel2"])
    assert result.record == record
    for number, image in enumerate(result.images):
        path = DATASET / "db_test" / slice_filename(result.name, number)
        np.testing.assert_array_equal(image, np.asarray(Image.open(path)))
    _assert_rows_equal(result.row, row)


def test_a_small_generated_sample_is_rebuilt_from_its_record() -> None:
    pytest.importorskip("porespy")
    pytest.importorskip("openpnm")
    config = dataset.DatasetConfig(
        seed=7, reservoirs=1, samples_per_reservoir=4, slices=3, image_size=48, volume_size=48
    )
    generated = dataset.generate_sample(config, reservoir_index=0, sample_index=3)
    assert generated.split == "db_test" and generated.row["Permeability_voxel2"] > 0
    rebuilt = dataset.regenerate_sample(config, json.loads(json.dumps(generated.record)))
    assert rebuilt.record == json.loads(json.dumps(generated.record))
    for image, expected in zip(rebuilt.images, generated.images, strict=True):
        np.testing.assert_array_equal(image, expected)
    _assert_rows_equal(rebuilt.row, generated.row)


def test_a_cemented_packing_fills_a_volume_taller_than_a_thousand_grains() -> None:
    pytest.importorskip("porespy")
    # ~2,500 spheres of radius 3 fill this column; porespy's default stops at 1,000 and leaves its top open.
    rock = volumes.cemented_packing((480, 32, 32), radius=3, cement=0.0, rng=np.random.default_rng(0))
    solid_per_quarter = [1 - quarter.mean() for quarter in np.array_split(rock.pore, 4, axis=0)]
    # A random sphere pack is 50-64 % solid throughout (loose to close packing).
    assert all(0.45 < solid < 0.66 for solid in solid_per_quarter), solid_per_quarter


def test_write_dataset_writes_the_layout_training_scans(tmp_path: Path) -> None:
    pytest.importorskip("porespy")
    pytest.importorskip("openpnm")
    config = dataset.DatasetConfig(
        seed=7, reservoirs=1, samples_per_reservoir=4, slices=2, image_size=32, volume_size=32
    )
    out = tmp_path / "set"
    report = dataset.write_dataset(out, config, "rockir-synthesize …", workers=1, progress=False)
    assert [r.name for r in report.results] == [f"VORS0{i}" for i in range(1, 5)]
    meta = pd.read_csv(out / "metadata.csv")
    assert list(meta.columns) == list(dataset.METADATA_COLUMNS)
    assert list(meta["Created_label"]) == [r.name for r in report.results]
    scanned = {split: sorted({s for _, s in scan_split(out, split)}) for split in SPLITS}
    assert scanned == {split: sorted(meta["Created_label"][meta["Split"] == split]) for split in SPLITS}
    record = json.loads((out / "generation.json").read_text())
    assert record["command"] == "rockir-synthesize …" and len(record["samples"]) == 4
    assert (out / "overview.png").is_file() and (out / "README.md").is_file()
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        dataset.write_dataset(out, config, "again", workers=1, progress=False)


def test_pixel_size_range_crops_slices_and_noise_sigma_sets_the_noise(tmp_path: Path) -> None:
    pytest.importorskip("porespy")
    pytest.importorskip("openpnm")
    config = dataset.DatasetConfig(
        seed=5, reservoirs=4, samples_per_reservoir=4, slices=1, image_size=24, volume_size=48,
        voxels_per_pixel=(1.0, 2.0),
    )  # fmt: skip
    # Overlapping grains (reservoir 3): grains are labelled per slice, so a cropped volume renders alike.
    results = [dataset.generate_sample(config, 3, sample) for sample in range(4)]
    crops = [r.record["crop_voxels"] for r in results]
    assert all(24 <= crop <= 48 for crop in crops) and len(set(crops)) > 1
    for result, crop in zip(results, crops, strict=True):
        assert result.row["Pixelsize"] == pytest.approx(result.record["voxel_size_um"] * crop / 24)
        assert result.images[0].shape == (24, 24)
    # The crop is the slice's centre: rendering that window by hand gives the same image.
    first = results[0]
    rock = dataset.regenerate_volume(config, first.record)
    _, _, render_seq = dataset.sample_seed_sequence(config.seed, 3, 0, first.record["attempt"]).spawn(3)
    start = (48 - crops[0]) // 2
    assert rock.grains is None
    window = volumes.Rock(rock.pore[:, start : start + crops[0], start : start + crops[0]], None)
    minerals = RESERVOIRS[3].minerals
    by_hand = render.render_slices(window, first.record["slice_positions"], minerals, render_seq, 24)
    np.testing.assert_array_equal(by_hand[0], first.images[0])
    # Noise: two renderings from one seed differ only by the Gaussian noise's scale.
    pore = np.zeros((64, 64), dtype=bool)
    pore[20:40, 20:40] = True
    labels = render.grain_labels(~pore)
    greys = render.mineral_greys(int(labels.max()), {"quartz": 1.0}, np.random.default_rng(0))
    quiet = render.render_slice(pore, labels, greys, np.random.default_rng(1), noise_sigma=0.0)
    noisy = render.render_slice(pore, labels, greys, np.random.default_rng(1), noise_sigma=20.0)
    assert np.std(noisy.astype(float) - quiet) == pytest.approx(20.0, rel=0.1)
    with pytest.raises(ValueError, match="at most volume_size / image_size = 2"):
        dataset.DatasetConfig(image_size=24, volume_size=48, voxels_per_pixel=(1.0, 3.0))


@pytest.mark.slow  # two spawned workers import porespy and OpenPNM: half a minute or more
def test_synthesize_with_worker_processes_ends_cleanly(tmp_path: Path) -> None:
    pytest.importorskip("porespy")
    pytest.importorskip("openpnm")
    command = [sys.executable, "-m", "rockir_jax.cli.synthesize", "--out", str(tmp_path / "set"),
               "--reservoirs", "1", "--samples-per-reservoir", "2", "--slices", "1", "--image-size", "16",
               "--volume-size", "24", "--workers", "2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # The pool's workers end normally: none is killed holding a semaphore (a warning at exit).
    assert "leaked" not in done.stderr and "Warning" not in done.stderr, done.stderr[-3000:]

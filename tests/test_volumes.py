"""Volumes to a training set: readers against the arrays written, slicing against numpy indexing,
properties against closed forms, the command's errors, atomic writes and reruns, and a training run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_physics import POISEUILLE_FACTOR, poiseuille_voxel2, tubes

from rockir_jax.cli import prepare as prepare_cli
from rockir_jax.physics import voxel2_to_millidarcy
from rockir_jax.volumes import volume_dataset
from rockir_jax.volumes.readers import RawSpec, VolumeError, open_volume
from rockir_jax.volumes.slicing import (
    IntensityWindow,
    even_positions,
    pixel_size_um,
    plan_slices,
    read_slices,
    to_training_image,
)

PORE_GREY, SOLID_GREY = 60, 160


def grey(pore: np.ndarray, seed: int = 0) -> np.ndarray:
    """A micro-CT-like uint8 volume of a pore mask: dark pores, bright solid, noise far below the gap."""
    noise = np.random.default_rng(seed).normal(0, 6, pore.shape)
    return np.clip(np.where(pore, PORE_GREY, SOLID_GREY) + noise, 0, 255).astype(np.uint8)


def bundle(n_tubes: int, radius: int = 4, size: int = 40) -> np.ndarray:
    centres = [(9.5, 9.5), (29.5, 29.5), (9.5, 29.5), (29.5, 9.5)][:n_tubes]
    return tubes(size, (size, size), centres, radius)


def run_cli(*args: object) -> None:
    prepare_cli.main([str(a) for a in args])


# --- readers --------------------------------------------------------------------------------------


def test_readers_return_the_arrays_written(tmp_path: Path) -> None:
    import h5py
    import tifffile

    volume = np.random.default_rng(0).integers(0, 65535, (6, 5, 7)).astype(np.uint16)
    volume.tofile(tmp_path / "a.raw")
    (tmp_path / "a.json").write_text(
        json.dumps({"shape": [6, 5, 7], "dtype": "uint16", "voxel_size_um": 2.5})
    )
    volume.astype(">u2").tofile(tmp_path / "b.raw")
    np.save(tmp_path / "c.npy", volume)
    tifffile.imwrite(tmp_path / "d.tif", volume, compression="zlib")  # compressed: read page by page
    tifffile.imwrite(tmp_path / "e.tif", volume)  # plain: memory-mapped
    (tmp_path / "f").mkdir()
    for z in range(6):
        tifffile.imwrite(tmp_path / "f" / f"slice_{z * 5}.tif", volume[z])  # natural order: 5 before 10
    with h5py.File(tmp_path / "g.h5", "w") as h5:
        h5["scan/grey"] = volume
        h5["scan/mask"] = volume > 100
    cases = {
        "a.raw": {},
        "b.raw": {"raw": RawSpec((6, 5, 7), ">u2")},
        "c.npy": {},
        "d.tif": {},
        "e.tif": {},
        "f": {},
        "g.h5": {"dataset": "scan/grey"},
    }
    for name, kwargs in cases.items():
        with open_volume(tmp_path / name, **kwargs) as opened:
            assert opened.shape == (6, 5, 7), name
            np.testing.assert_array_equal(opened.read(0, 6), volume, err_msg=name)
            np.testing.assert_array_equal(
                np.concatenate([b for _, b in opened.chunks(max_bytes=140)]), volume
            )
    assert open_volume(tmp_path / "a.raw").voxel_size_um == 2.5
    assert open_volume(tmp_path / "f").name == "f"


def test_reader_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    import h5py

    np.zeros(999, np.uint8).tofile(tmp_path / "short.raw")
    with pytest.raises(VolumeError, match=r"short\.raw: 999 bytes, but shape 10x10x10 of uint8 needs 1000"):
        open_volume(tmp_path / "short.raw", raw=RawSpec((10, 10, 10), "uint8"))
    with pytest.raises(VolumeError, match=r"short\.raw: a raw volume needs its shape and dtype"):
        open_volume(tmp_path / "short.raw")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00 this is not a TIFF")
    with pytest.raises(VolumeError, match=r"bad\.tif: not a readable TIFF"):
        open_volume(tmp_path / "bad.tif")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4)))
    with pytest.raises(VolumeError, match=r"flat\.npy: shape \(4, 4\) is not a 3-D volume"):
        open_volume(tmp_path / "flat.npy")
    with h5py.File(tmp_path / "two.h5", "w") as h5:
        h5["a"] = np.zeros((3, 3, 3))
        h5["b"] = np.zeros((3, 3, 3))
    with pytest.raises(VolumeError, match=r"two\.h5: 2 3-D datasets, name one with --dataset"):
        open_volume(tmp_path / "two.h5")


def test_netcdf_readers_return_the_arrays_written(tmp_path: Path) -> None:
    """NetCDF-4 is HDF5 (h5py reads it); classic NetCDF goes through scipy's memory map."""
    import h5py
    from scipy.io import netcdf_file

    volume = np.random.default_rng(2).integers(-500, 500, (4, 5, 6)).astype(np.int16)
    with h5py.File(tmp_path / "four.nc", "w") as h5:
        h5["grey"] = volume
        h5["x"] = np.arange(6)
    with netcdf_file(tmp_path / "classic.nc", "w") as nc:
        for name, size in zip("zyx", volume.shape, strict=True):
            nc.createDimension(name, size)
        nc.createVariable("grey", volume.dtype, ("z", "y", "x"))[:] = volume
        nc.createVariable("mask", np.int8, ("z", "y", "x"))[:] = volume > 0
    for name, kwargs, fmt in (("four.nc", {}, "hdf5"), ("classic.nc", {"dataset": "grey"}, "netcdf")):
        with open_volume(tmp_path / name, **kwargs) as opened:
            assert opened.shape == (4, 5, 6) and opened.description == {"format": fmt, "dataset": "grey"}
            np.testing.assert_array_equal(opened.read(1, 3), volume[1:3])
    with pytest.raises(VolumeError, match=r"classic\.nc: 2 3-D datasets, name one with --dataset"):
        open_volume(tmp_path / "classic.nc")
    with pytest.raises(VolumeError, match=r"classic\.nc: no dataset 'nope' \(found: grey \(4, 5, 6\)"):
        open_volume(tmp_path / "classic.nc", dataset="nope")
    with pytest.raises(VolumeError, match=r"four\.nc: dataset 'x' shape \(6,\) is not a 3-D volume"):
        open_volume(tmp_path / "four.nc", dataset="x")
    (tmp_path / "junk.nc").write_bytes(b"CDF\x01 not quite")
    with pytest.raises(VolumeError, match=r"junk\.nc: neither NetCDF-4 \(HDF5\) nor classic NetCDF"):
        open_volume(tmp_path / "junk.nc")
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF\r\n\x1a\n not quite")
    with pytest.raises(VolumeError, match=r"junk\.h5: not a readable HDF5 file"):
        open_volume(tmp_path / "junk.h5")


def tiff_claiming(width: int, height: int) -> bytes:
    """A TIFF of one uncompressed 16-bit RGB page declaring ``width`` x ``height`` pixels, holding 12 bytes:
    tifffile makes it a (height, width, 3) series of one page."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 16), (259, 3, 1), (262, 3, 2), (273, 4, 0),
            (277, 3, 3), (278, 4, height), (279, 4, 12), (284, 3, 1)]  # fmt: skip
    data_offset = 8 + 2 + 12 * len(tags) + 4
    entries = b"".join(
        struct.pack("<HHII", tag, kind, 1, data_offset if tag == 273 else value)
        if kind == 4
        else struct.pack("<HHIHH", tag, kind, 1, value, 0)
        for tag, kind, value in tags
    )
    return b"II*\x00" + struct.pack("<IH", 8, len(tags)) + entries + bytes(4) + bytes(12)


def test_headers_claiming_huge_or_odd_volumes_get_volume_errors(tmp_path: Path) -> None:
    import h5py

    # A TIFF page claiming 4 planes of 200,000,000 x 3 voxels: refused before anything is read (it was
    # read whole at open); a small one whose pages are not planes is read whole on the first read.
    (tmp_path / "claim.tif").write_bytes(tiff_claiming(200_000_000, 4))
    with pytest.raises(
        VolumeError, match=r"claim\.tif: a plane of 200000000×3 uint16 is 1,200,000,000 bytes"
    ):
        open_volume(tmp_path / "claim.tif")
    (tmp_path / "short.tif").write_bytes(tiff_claiming(1000, 4))
    with open_volume(tmp_path / "short.tif") as opened, pytest.raises(VolumeError, match="failed to read"):
        opened.read(0, 2)

    # An HDF5 dataset may declare any shape and store nothing: its planes would not fit in memory.
    with h5py.File(tmp_path / "huge.h5", "w") as h5:
        h5.create_dataset("grey", shape=(4, 10**6, 10**6), dtype="u1", chunks=(1, 64, 64))
    with pytest.raises(
        VolumeError, match=r"huge\.h5: a plane of 1000000×1000000 uint8 is 1,000,000,000,000 bytes"
    ):
        open_volume(tmp_path / "huge.h5")
    # A zip archive (np.savez) named .npy, and arrays that are no grey levels.
    np.savez(tmp_path / "zipped.npz", a=np.zeros((3, 3, 3)))
    (tmp_path / "zipped.npz").rename(tmp_path / "zipped.npy")
    with pytest.raises(VolumeError, match=r"zipped\.npy: not a readable \.npy file"):
        open_volume(tmp_path / "zipped.npy")
    np.save(tmp_path / "text.npy", np.full((3, 3, 3), "a"))
    with pytest.raises(VolumeError, match=r"text\.npy: dtype <U1 is not a grey-level volume"):
        open_volume(tmp_path / "text.npy")
    # Sidecars: a voxel size that is no number, a shape whose byte count overflows int64.
    np.zeros(27, np.uint8).tofile(tmp_path / "cube.raw")
    for sidecar, message in (
        ({"shape": [3, 3, 3], "dtype": "uint8", "voxel_size_um": "tiny"}, "voxel_size_um"),
        ({"shape": [3, 3, 3], "dtype": "uint8", "voxel_size_um": [1]}, "voxel_size_um"),
        ({"shape": [3, 3, 3], "dtype": "uint8", "voxel_size_um": -1}, "voxel_size_um"),
        ({"shape": [2**62, 2**62, 4], "dtype": "uint8"}, "bytes, but shape"),
        ({"shape": [3, 3, 3], "dtype": "O"}, "dtype"),
    ):
        (tmp_path / "cube.json").write_text(json.dumps(sidecar))
        with pytest.raises(VolumeError, match=message):
            open_volume(tmp_path / "cube.raw")


# --- slicing --------------------------------------------------------------------------------------


def test_even_positions_spread_through_volume() -> None:
    positions = even_positions(128, 12)
    assert len(set(positions)) == 12
    assert 0 < positions[0] and positions[-1] < 127
    assert min(np.diff(positions)) >= 9


def test_slices_along_every_axis_match_numpy_indexing(tmp_path: Path) -> None:
    volume = np.random.default_rng(1).integers(0, 255, (12, 10, 14)).astype(np.uint8)
    np.save(tmp_path / "v.npy", volume)
    plan = plan_slices(volume.shape, 7, axes=(0, 1, 2))
    assert [axis for axis, _ in plan.cuts] == [0, 0, 0, 1, 1, 2, 2]
    random = plan_slices(volume.shape, 6, axes=(2,), random=np.random.default_rng(0))
    assert len({index for _, index in random.cuts}) == 6
    with open_volume(tmp_path / "v.npy") as opened:
        for (axis, index), image in zip(plan.cuts, read_slices(opened, plan), strict=True):
            np.testing.assert_array_equal(image, np.take(volume, index, axis=axis))


def test_window_crop_resize_and_pixel_size() -> None:
    window = IntensityWindow.of(np.arange(1001, dtype=np.float64), (10, 90))
    assert (window.low, window.high) == (100.0, 900.0)  # percentiles of 0..1000
    image = np.array([[0, 100, 700, 900, 1000, 7]] * 4)  # 4 x 6: the centred 4 x 4 crop is columns 1-4
    # (700 - 100) * 255 / 800 = 191.25
    np.testing.assert_array_equal(to_training_image(image, window, None)[0], [0, 191, 255, 255])
    assert to_training_image(image, window, 2).shape == (2, 2)
    assert pixel_size_um(3.0, (40, 50), 20) == 6.0  # the 40-voxel crop side over 20 pixels
    assert IntensityWindow.of(np.array([0, 1, 1, 1]), (0.5, 99.5)).high == 1.0  # binary data: full range
    with pytest.raises(ValueError, match="constant intensity"):
        IntensityWindow.of(np.full(5, 3.0))


def test_split_by_sample_is_seeded_and_complete() -> None:
    names = [f"s{i}" for i in range(10)]
    splits = volume_dataset.assign_splits(names, (0.6, 0.2, 0.2), seed=3)
    assert sorted(splits) == names
    assert sorted(splits.values()).count("train") == 6 and list(splits.values()).count("db_test") == 2
    assert splits == volume_dataset.assign_splits(list(reversed(names)), (0.6, 0.2, 0.2), seed=3)
    assert splits != volume_dataset.assign_splits(names, (0.6, 0.2, 0.2), seed=4)


# --- the command ----------------------------------------------------------------------------------


def test_lattice_boltzmann_flow_option_against_hagen_poiseuille(tmp_path: Path) -> None:
    """``--flow lbm``: a short tube of radius 6 voxels solved on the voxels, k within 5 % of
    Hagen–Poiseuille's φ r²/8 (r the equal-area radius), and the source column says which solver."""
    (tmp_path / "vols").mkdir()
    pore = tubes(16, (24, 24), [(11.5, 11.5)], 6)
    grey(pore).tofile(tmp_path / "vols" / "tube.raw")
    run_cli("--volumes", tmp_path / "vols", "--out", tmp_path / "ds", "--shape", "16,24,24", "--dtype",
            "uint8", "--voxel-size", 2.0, "--slices", 2, "--split", "1,0,0", "--flow", "lbm")  # fmt: skip
    meta = pd.read_csv(tmp_path / "ds" / "metadata.csv").set_index("Created_label")
    analytic = voxel2_to_millidarcy(poiseuille_voxel2(pore[0]), 2.0)
    assert meta.loc["tube", "Permeability"] == pytest.approx(analytic, rel=0.05)
    assert meta.loc["tube", "Permeability_source"].startswith("computed: lattice Boltzmann")


def test_tube_bundle_properties_against_closed_forms(tmp_path: Path) -> None:
    pytest.importorskip("porespy")
    (tmp_path / "vols").mkdir()
    pores = {"one": bundle(1), "four": bundle(4)}
    for name, pore in pores.items():
        grey(pore).tofile(tmp_path / "vols" / f"{name}.raw")
    run_cli("--volumes", tmp_path / "vols", "--out", tmp_path / "ds", "--shape", "40,40,40", "--dtype",
            "uint8", "--voxel-size", 2.0, "--slices", 3, "--image-size", 20, "--split", "1,0,0")  # fmt: skip
    meta = pd.read_csv(tmp_path / "ds" / "metadata.csv").set_index("Created_label")
    for name, pore in pores.items():
        assert meta.loc[name, "Porosity"] == pore.sum() / pore.size  # Otsu recovers the mask exactly
        analytic = voxel2_to_millidarcy(poiseuille_voxel2(pore[0], n_tubes=int(name == "four") * 3 + 1), 2.0)
        assert analytic / POISEUILLE_FACTOR < meta.loc[name, "Permeability"] < analytic * POISEUILLE_FACTOR
        assert meta.loc[name, "Pixelsize"] == 4.0 and meta.loc[name, "Image"] == name
        assert meta.loc[name, "Permeability_source"].startswith("computed: snow2 + Stokes flow along axis 0")
        images = sorted((tmp_path / "ds" / "train" / name).glob("*.png"))
        assert [p.name for p in images] == [f"{name}_slice{i}.png" for i in range(3)]
        assert Image.open(images[0]).size == (20, 20)
    assert meta.loc["four", "Permeability"] == pytest.approx(4 * meta.loc["one", "Permeability"], rel=0.05)
    assert (tmp_path / "ds" / "contact_sheet.png").is_file()
    assert not (tmp_path / "ds.partial").exists()


def test_lab_values_win_and_non_percolating_volumes_are_left_out(tmp_path: Path, capsys) -> None:
    pytest.importorskip("porespy")
    (tmp_path / "vols").mkdir()
    np.save(tmp_path / "vols" / "open.npy", grey(bundle(1)))
    np.save(tmp_path / "vols" / "measured.npy", grey(bundle(1), seed=1))
    closed = bundle(1)
    closed[20] = False  # a wall across the tube
    np.save(tmp_path / "vols" / "closed.npy", grey(closed))
    lab = tmp_path / "lab.csv"
    lab.write_text("Sample,Permeability,Reservoir,Grain_size\nmeasured,123.0,LAB,0.25\n")
    run_cli("--volumes", tmp_path / "vols", "--out", tmp_path / "ds", "--voxel-size", 1.0, "--slices", 2,
            "--lab-csv", lab, "--split", "1,0,0", "--reservoir", "SYN")  # fmt: skip
    out = capsys.readouterr()
    assert "closed.npy: does not percolate along axis 0" in out.err and "no flow: left out" in out.out
    meta = pd.read_csv(tmp_path / "ds" / "metadata.csv").set_index("Created_label")
    assert sorted(meta.index) == ["measured", "open"]
    assert (
        meta.loc["measured", "Permeability"] == 123.0 and meta.loc["measured", "Permeability_source"] == "lab"
    )
    assert meta.loc["measured", "Porosity_source"].startswith("computed: pore fraction, otsu threshold")
    assert meta.loc["measured", "Grain_size"] == 0.25
    assert meta.loc["measured", "Reservoir"] == "LAB" and meta.loc["open", "Reservoir"] == "SYN"


def test_bad_inputs_write_nothing_and_reruns_reuse_finished_volumes(tmp_path: Path, capsys) -> None:
    pytest.importorskip("porespy")
    vols, out = tmp_path / "vols", tmp_path / "ds"
    vols.mkdir()
    np.save(vols / "good.npy", grey(bundle(1)))
    np.save(vols / "solid.npy", grey(np.zeros((40, 40, 40), bool)))
    with pytest.raises(SystemExit):
        run_cli("--volumes", vols, "--out", out, "--voxel-size", 1.0, "--threshold", 100, "--slices", 2)
    err = capsys.readouterr().err
    assert "solid.npy: the volume is all solid with threshold threshold 100, dark pores" in err
    assert not out.exists() and (tmp_path / "ds.partial" / "volumes" / "good" / "result.json").is_file()

    # With Otsu (the default), a noisy one-phase volume has no two phases to find.
    with pytest.raises(SystemExit):
        run_cli("--volumes", vols / "solid.npy", "--out", out, "--voxel-size", 1.0, "--slices", 2)
    assert "solid.npy: no pore and solid phases to tell apart" in capsys.readouterr().err

    (vols / "solid.npy").unlink()
    lab = tmp_path / "lab.csv"
    lab.write_text("Created_label,Porosity\ngood,0.1\nmissing,0.2\n")
    with pytest.raises(SystemExit):
        run_cli("--volumes", vols, "--out", out, "--voxel-size", 1.0, "--lab-csv", lab)
    assert "lab.csv line 3: sample 'missing' has no volume" in capsys.readouterr().err

    args = ["--volumes", vols, "--out", out, "--voxel-size", 1.0, "--threshold", 100, "--slices", 2]
    run_cli(*args, "--split", "1,0,0")
    assert "1 volume(s) reused" in capsys.readouterr().out  # finished in the failed run
    record = json.loads((out / "prepare.json").read_text())
    assert list(record["volumes"]) == ["good"] and not (tmp_path / "ds.partial").exists()
    np.save(vols / "more.npy", grey(bundle(4)))
    run_cli(*args, "--split", "1,0,0")
    summary = capsys.readouterr().out
    assert "good" in summary and "(reused)" in summary and "1 volume(s) reused" in summary
    assert sorted(p.name for p in (out / "train").iterdir()) == ["good", "more"]


def test_prepared_volumes_train_and_evaluate(tmp_path: Path) -> None:
    """A few volumes -> rockir-prepare -> 2 training steps -> evaluation with the computed properties."""
    pytest.importorskip("porespy")
    from test_evaluate import short_config

    from rockir_jax.retrieval.evaluation import evaluate
    from rockir_jax.retrieval.loading import load_model
    from rockir_jax.training.trainer import train_and_evaluate

    vols = tmp_path / "vols"
    vols.mkdir()
    for i, (n, radius) in enumerate([(1, 4), (4, 4), (1, 6), (4, 5), (2, 6)]):
        np.save(vols / f"TUB{i:03d}.npy", grey(bundle(n, radius), seed=i))
    root = tmp_path / "ds"
    run_cli("--volumes", vols, "--out", root, "--voxel-size", 2.0, "--slices", 4, "--image-size", 32,
            "--split", "0.6,0.2,0.2")  # fmt: skip
    workdir = tmp_path / "run"
    train_and_evaluate(short_config(root, tmp_path / "cache"), workdir)
    report = evaluate(
        load_model(workdir), root, tmp_path / "eval", metadata_csv=root / "metadata.csv",
        split="db_test", k=3, figures=1, batch_size=8,
    )  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["n_images_with_metadata"] == metrics["n_images"] == 4
    assert metrics["metrics"]["metadata/porosity_mae"] >= 0
    meta = pd.read_csv(root / "metadata.csv")
    assert meta["Porosity_source"].str.startswith("computed").all()
    assert meta["Permeability_source"].str.startswith("computed").all()


def test_slice_level_split_puts_every_sample_in_every_split(tmp_path: Path) -> None:
    """--split-by slice: each sample's slices are split (seeded), so every sample is in train, val and
    db_test, and the data set validates (with a warning) for training."""
    pytest.importorskip("porespy")
    from rockir_jax.data.metadata import index_dataset

    vols = tmp_path / "vols"
    vols.mkdir()
    for name in ("AAA001", "BBB001"):
        np.save(vols / f"{name}.npy", grey(bundle(1)))
    args = ("--volumes", vols, "--voxel-size", 2.0, "--slices", 6, "--image-size", 20, "--split", "4,1,1")
    run_cli(*args, "--out", tmp_path / "ds", "--split-by", "slice", "--threshold", 100)
    for name in ("AAA001", "BBB001"):
        train = sorted(p.name for p in (tmp_path / "ds" / "train" / name).glob("*.png"))
        val = sorted(p.name for p in (tmp_path / "ds" / "val" / name).glob("*.png"))
        test = sorted(p.name for p in (tmp_path / "ds" / "db_test").glob(f"{name}_*.png"))
        assert (len(train), len(val), len(test)) == (4, 1, 1)
        assert sorted(train + val + test) == sorted(f"{name}_slice{i}.png" for i in range(6))
    with pytest.warns(UserWarning, match="AAA001 .train.val.db_test."):
        index = index_dataset(tmp_path / "ds", tmp_path / "ds" / "metadata.csv")
    assert set(index.splits) == {"train", "val", "db_test"}
    run_cli(*args, "--out", tmp_path / "again", "--split-by", "slice", "--threshold", 100)
    assert sorted(p.name for p in (tmp_path / "again" / "db_test").iterdir() if p.suffix == ".png") == sorted(
        p.name for p in (tmp_path / "ds" / "db_test").iterdir() if p.suffix == ".png"
    )

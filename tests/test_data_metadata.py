"""Tests for rockir_jax.data.metadata: image reading, targets, same_meta, indexing, validation."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rockir_jax.data.metadata import (
    DataValidationError,
    TargetSpec,
    compute_targets,
    index_dataset,
    limit_samples_per_reservoir,
    same_metadata,
    targets_to_physical,
)
from rockir_jax.images import read_image

RNG = np.random.default_rng(0)


def noise(shape, dtype=np.uint8, high=256):
    return RNG.integers(0, high, shape, dtype=dtype)


def write_png(path: Path, size: int = 32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise((size, size)), "L").save(path)
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def row(sample: str, porosity=0.2, permeability=400.0, pixel_size=2.0, **extra) -> dict:
    return {
        "Image": f"{sample}.raw",
        "Label": "x",
        "Pixelsize": pixel_size,
        "Created_label": sample,
        "Porosity": porosity,
        "Permeability": permeability,
        **extra,
    }


def make_dataset(root: Path, layout: dict[str, dict[str, int]], rows=None) -> Path:
    """layout: split -> sample -> image count; writes PNGs and a CSV with one row per sample."""
    for split, samples in layout.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for sample, n in samples.items():
            for k in range(n):
                if split == "db_test":
                    write_png(root / split / f"{sample}_slice{k}.png")
                else:
                    write_png(root / split / sample / f"{sample}_slice{k}.png")
    if rows is None:
        rows = [row(s) for samples in layout.values() for s in samples]
    return write_csv(root / "metadata.csv", rows)


GOOD = {"train": {"AAA001": 2, "AAA002": 3}, "val": {"BBB001": 2}, "db_test": {"CCC001": 2}}


# ------------------------------------------------------------------------------------------------
# Images


def test_read_8bit_grey_replicates_channels(tmp_path):
    pixels = noise((32, 32))
    Image.fromarray(pixels, "L").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png", 32)
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], pixels)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_read_16bit_grey_scales_by_dtype_range(tmp_path, suffix):
    pixels = noise((32, 32), np.uint16, 65536)
    pixels[0, :3] = [0, 65535, 257 * 100]
    Image.fromarray(pixels).save(tmp_path / f"a{suffix}")
    out = read_image(tmp_path / f"a{suffix}", 32)
    expected = np.floor(pixels.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 1], expected)
    assert list(out[0, :3, 0]) == [0, 255, 100]


def test_read_rgb_and_rgba_drop_alpha(tmp_path):
    rgba = noise((32, 32, 4))
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "rgb.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png", 32), rgba[..., :3])
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png", 32), rgba[..., :3])


def test_read_palette_expands_colours(tmp_path):
    palette = noise((256, 3))
    indices = noise((32, 32))
    image = Image.fromarray(indices, "L")
    image.putpalette(palette.reshape(-1).tolist())  # turns the L image into a P image
    image.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_image(tmp_path / "p.png", 32), palette[indices])


def test_read_jpeg_close_to_source(tmp_path):
    ramp = np.add.outer(np.arange(32), np.arange(32)).astype(np.uint8) * 4  # smooth: JPEG-friendly
    Image.fromarray(ramp, "L").save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg", 32)
    assert np.abs(out[..., 0].astype(int) - ramp).max() <= 4


def test_read_resizes_any_shape_with_bilinear(tmp_path):
    pixels = noise((20, 48))
    Image.fromarray(pixels, "L").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png", 32)
    assert out.shape == (32, 32, 3)
    expected = np.asarray(Image.fromarray(pixels, "L").resize((32, 32), Image.Resampling.BILINEAR), np.uint8)
    np.testing.assert_array_equal(out[..., 2], expected)
    # A constant image stays constant through any resampling.
    Image.fromarray(np.full((50, 70), 77, np.uint8), "L").save(tmp_path / "c.png")
    assert (read_image(tmp_path / "c.png", 32) == 77).all()


# ------------------------------------------------------------------------------------------------
# Targets and same_meta


def test_targets_hand_computed():
    targets = compute_targets([0.2, 0.05], [400.0, 1000.0], [2.0, 1.0])
    # log10(400 / 2**2) / 5 = 2 / 5; log10(1000 / 1) / 5 = 3 / 5
    np.testing.assert_allclose(targets, [[0.2, 0.4], [0.05, 0.6]], rtol=1e-6)
    assert targets.dtype == np.float32


def test_targets_configurable_and_extra_columns():
    spec = TargetSpec(log_permeability_divisor=2.0, divide_by_pixel_area=False, extra=("Depth",))
    targets = compute_targets([0.3], [100.0], [3.0], spec, extra=np.array([[1234.5]]))
    np.testing.assert_allclose(targets, [[0.3, 1.0, 1234.5]], rtol=1e-6)
    assert spec.names == ("porosity", "log_permeability", "Depth")


def test_targets_inverse_restores_physical_units():
    porosity = np.array([0.1, 0.25])
    permeability = np.array([3.5, 800.0])
    pixel_size = np.array([2.5, 0.7])
    for spec in (TargetSpec(), TargetSpec(3.0, False)):
        targets = compute_targets(porosity, permeability, pixel_size, spec)
        back_por, back_perm = targets_to_physical(targets, pixel_size, spec)
        np.testing.assert_allclose(back_por, porosity, rtol=1e-6)
        np.testing.assert_allclose(back_perm, permeability, rtol=1e-5)


def test_same_metadata_hand_computed():
    d0 = np.array([[0.2, 0.4], [0.2, 0.4], [0.2, 0.4], [0.3, 0.5], [0.0, 0.4]])
    d1 = np.array([[0.21, 0.4], [0.2, 0.44], [0.18, 0.44], [0.3, 0.5], [0.0, 0.4]])
    # |0.01/0.21| = 0.048; |0.04/0.44| = 0.091; 0.02/0.18 + 0.04/0.44 = 0.202; identical; identical
    # with a zero component (0/0 counts as 0).
    np.testing.assert_array_equal(same_metadata(d0, d1), [True, True, False, True, True])
    np.testing.assert_array_equal(same_metadata(d0, d1, tol=0.05), [True, False, False, True, True])
    # Relative to d1, so not symmetric: 0.105 / 1.105 = 0.095 < 0.1 but 0.105 / 1.0 is not.
    assert same_metadata(np.array([1.0]), np.array([1.105]))
    assert not same_metadata(np.array([1.105]), np.array([1.0]))


# ------------------------------------------------------------------------------------------------
# Indexing


def test_index_tables_and_vocabularies(tmp_path):
    rows = [
        row("AAA001", 0.1, 400.0, 2.0),
        row("AAA002", 0.2, 1000.0, 1.0),
        row("BBB001", 0.3, 100.0, 1.0),
        row("CCC001", 0.4, 10.0, 1.0),
        row("ZZZ999", 0.5, 10.0, 1.0),  # not on disk: allowed
    ]
    csv = make_dataset(tmp_path, GOOD, rows)
    index = index_dataset(tmp_path, csv)
    assert index.samples == ("AAA001", "AAA002", "BBB001", "CCC001")
    assert index.reservoirs == ("AAA", "BBB", "CCC")
    assert {k: len(v) for k, v in index.splits.items()} == {"train": 5, "val": 2, "db_test": 2}
    train = index.splits["train"]
    assert list(train.sample_ids) == [0, 0, 1, 1, 1]
    assert list(train.reservoir_ids) == [0] * 5
    np.testing.assert_allclose(train.targets[0], [0.1, 0.4], rtol=1e-6)
    np.testing.assert_allclose(train.targets[2], [0.2, 0.6], rtol=1e-6)
    assert all(Path(p).parent.name == s for p, s in zip(train.paths, train.samples, strict=True))
    assert list(index.splits["db_test"].samples) == ["CCC001", "CCC001"]
    assert list(index.splits["val"].reservoir_ids) == [1, 1]


def test_limit_samples_per_reservoir_keeps_the_first_by_name(tmp_path):
    layout = {
        "train": {"AAA003": 1, "AAA001": 2, "AAA002": 3, "BBB002": 2, "BBB001": 1},
        "val": {"AAA004": 2},
    }
    index = index_dataset(tmp_path, make_dataset(tmp_path, layout))
    one = limit_samples_per_reservoir(index, "train", 1)
    assert sorted(set(one.splits["train"].samples)) == ["AAA001", "BBB001"]
    two = limit_samples_per_reservoir(index, "train", 2)
    train = two.splits["train"]
    assert sorted(train.samples) == ["AAA001"] * 2 + ["AAA002"] * 3 + ["BBB001", "BBB002", "BBB002"]
    # Rows stay aligned with their files, ids and targets; vocabularies and other splits are unchanged.
    assert all(Path(p).parent.name == s for p, s in zip(train.paths, train.samples, strict=True))
    assert [index.samples[i] for i in train.sample_ids] == list(train.samples)
    full = index.splits["train"]
    for path, target in zip(train.paths, train.targets, strict=True):
        np.testing.assert_array_equal(target, full.targets[full.paths.index(path)])
    assert two.samples == index.samples and two.splits["val"] is index.splits["val"]
    assert limit_samples_per_reservoir(index, "train", 9).splits["train"].paths == full.paths
    with pytest.raises(ValueError, match="at least 1"):
        limit_samples_per_reservoir(index, "train", 0)


def test_index_reservoir_column_and_extra_targets(tmp_path):
    values = [("AAA001", "north", 10.0), ("AAA002", "south", 20.0), ("BBB001", "north", 30.0),
              ("CCC001", "west", 40.0)]  # fmt: skip
    rows = [row(s, Reservoir=r, Depth=d) for s, r, d in values]
    csv = make_dataset(tmp_path, GOOD, rows)
    index = index_dataset(tmp_path, csv, extra_targets=("Depth",))
    assert index.reservoirs == ("north", "south", "west")
    train = index.splits["train"]
    assert list(train.reservoirs) == ["north"] * 2 + ["south"] * 3
    np.testing.assert_allclose(train.targets[:, 2], [10, 10, 20, 20, 20])
    assert index.target_names == ("porosity", "log_permeability", "Depth")


def test_index_keeps_numeric_looking_names_as_text(tmp_path):
    csv = make_dataset(tmp_path, {"train": {"001": 1, "002": 1}})
    index = index_dataset(tmp_path, csv)
    assert index.samples == ("001", "002") and index.reservoirs == ("001", "002")


def test_index_optional_splits_and_hidden_files(tmp_path):
    csv = make_dataset(tmp_path, {"train": {"AAA001": 2}})
    (tmp_path / "train" / "AAA001" / ".DS_Store").write_text("finder")
    index = index_dataset(tmp_path, csv)
    assert list(index.splits) == ["train"]
    assert len(index.splits["train"]) == 2


# ------------------------------------------------------------------------------------------------
# Validation: each problem names its file or CSV line; all problems are listed at once


def problems_of(root: Path, csv: Path, **kwargs) -> list[str]:
    with pytest.raises(DataValidationError) as info:
        index_dataset(root, csv, **kwargs)
    message = str(info.value)
    assert all(p in message for p in info.value.problems)
    return info.value.problems


def only(problems: list[str], *needles: str) -> str:
    assert len(problems) == 1, problems
    for needle in needles:
        assert needle in problems[0], (needle, problems[0])
    return problems[0]


def test_truncated_image(tmp_path):
    csv = make_dataset(tmp_path, GOOD)
    path = tmp_path / "train" / "AAA002" / "AAA002_slice1.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    only(problems_of(tmp_path, csv), str(path), "truncated")


def test_image_suffix_but_not_an_image(tmp_path):
    csv = make_dataset(tmp_path, GOOD)
    path = tmp_path / "db_test" / "CCC001_slice9.png"
    path.write_text("not a png")
    only(problems_of(tmp_path, csv), str(path), "unreadable")


def test_non_image_file(tmp_path):
    csv = make_dataset(tmp_path, GOOD)
    path = tmp_path / "val" / "BBB001" / "notes.txt"
    path.write_text("hello")
    only(problems_of(tmp_path, csv), str(path), "not an image file")


def test_sample_folder_without_csv_row(tmp_path):
    csv = make_dataset(tmp_path, GOOD)
    write_png(tmp_path / "train" / "DDD001" / "x.png")
    only(problems_of(tmp_path, csv), str(tmp_path / "train" / "DDD001"), "'DDD001'", "no valid row")


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        ("Permeability", np.nan, "Permeability must be a positive number"),
        ("Permeability", 0.0, "Permeability must be a positive number"),
        ("Permeability", -5.0, "Permeability must be a positive number"),
        ("Pixelsize", np.nan, "Pixelsize must be a positive number"),
        ("Pixelsize", 0.0, "Pixelsize must be a positive number"),
        ("Pixelsize", "abc", "Pixelsize must be a positive number"),
        ("Porosity", 1.5, "Porosity must be in [0, 1]"),
        ("Porosity", -0.1, "Porosity must be in [0, 1]"),
    ],
)
def test_bad_csv_values_name_the_line(tmp_path, column, value, needle):
    rows = [row(s) for samples in GOOD.values() for s in samples]
    rows[2][column] = value  # BBB001, data row 3 = line 4 of the file
    csv = make_dataset(tmp_path, GOOD, rows)
    problems = problems_of(tmp_path, csv)
    # The row's own problem, then (since the row is unusable) the sample with no valid row.
    assert len(problems) == 2, problems
    assert f"{csv} line 4 (sample 'BBB001')" in problems[0] and needle in problems[0]
    assert "'BBB001' has no valid row" in problems[1]


def test_duplicate_sample_names(tmp_path):
    rows = [row(s) for samples in GOOD.values() for s in samples]
    rows.append(row("AAA002", porosity=0.3))
    csv = make_dataset(tmp_path, GOOD, rows)
    problems = problems_of(tmp_path, csv)
    assert any("lines 3, 6" in p and "duplicate Created_label 'AAA002'" in p for p in problems)


def test_missing_columns(tmp_path):
    rows = [{k: v for k, v in row(s).items() if k != "Porosity"} for s in ["AAA001"]]
    csv = make_dataset(tmp_path, {"train": {"AAA001": 1}}, rows)
    only(problems_of(tmp_path, csv), str(csv), "missing column(s) Porosity")
    csv = make_dataset(tmp_path, {"train": {"AAA001": 1}})
    only(problems_of(tmp_path, csv, extra_targets=("Depth",)), "missing column(s) Depth")


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(DataValidationError, match="data root does not exist"):
        index_dataset(tmp_path / "nowhere", tmp_path / "m.csv")
    csv = make_dataset(tmp_path, {"val": {"BBB001": 1}})
    only(problems_of(tmp_path, csv), str(tmp_path / "train"), "required split folder is missing")
    make_dataset(tmp_path, {"train": {"AAA001": 1}})
    only(problems_of(tmp_path, tmp_path / "other.csv"), "other.csv", "does not exist")


def test_empty_split_and_empty_sample_folder(tmp_path):
    csv = make_dataset(tmp_path, GOOD)
    (tmp_path / "db_test").mkdir(exist_ok=True)
    for p in (tmp_path / "db_test").iterdir():
        p.unlink()
    (tmp_path / "train" / "EEE001").mkdir()
    problems = problems_of(tmp_path, csv)
    assert any(str(tmp_path / "db_test") in p and "split has no images" in p for p in problems)
    assert any(str(tmp_path / "train" / "EEE001") in p and "no images" in p for p in problems)


def test_sample_in_two_splits(tmp_path):
    csv = make_dataset(tmp_path, GOOD)
    write_png(tmp_path / "val" / "AAA001" / "AAA001_slice7.png")
    # A slice-level split is the original's own (its db_test holds slices of training samples).
    with pytest.warns(UserWarning, match=r"1 sample\(s\).*AAA001 \(train\+val\)"):
        index = index_dataset(tmp_path, csv)
    assert "AAA001" in index.splits["val"].samples
    only(problems_of(tmp_path, csv, disjoint_samples=True), "'AAA001'", "train/", "val/")


def test_original_csv_randomised_folders(tmp_path):
    """The original's form: train folders by Created_label (AA01 …), db_test files by Image."""
    rows = [dict(row("XX01"), Image="E002M0.raw"), dict(row("XX02"), Image="S017M1")]
    csv = make_dataset(tmp_path, {"train": {"XX01": 2, "XX02": 1}}, rows)
    write_png(tmp_path / "db_test" / "E002M0_slice9.png")
    with pytest.warns(UserWarning, match="E002M0"):
        index = index_dataset(tmp_path, csv)
    assert index.samples == ("E002M0", "S017M1") and index.reservoirs == ("E00", "S01")
    assert list(index.splits["db_test"].samples) == ["E002M0"]


def test_all_problems_listed_at_once(tmp_path):
    rows = [row(s) for samples in GOOD.values() for s in samples]
    rows[0]["Porosity"] = 2.0
    rows[3]["Permeability"] = -1.0
    csv = make_dataset(tmp_path, GOOD, rows)
    truncated = tmp_path / "train" / "AAA002" / "AAA002_slice0.png"
    truncated.write_bytes(truncated.read_bytes()[:40])
    (tmp_path / "train" / "AAA002" / "readme.md").write_text("x")
    write_png(tmp_path / "train" / "NEW001" / "a.png")
    problems = problems_of(tmp_path, csv)
    needles = [
        "line 2 (sample 'AAA001'): Porosity",
        "line 5 (sample 'CCC001'): Permeability",
        f"{truncated}: unreadable or truncated",
        "readme.md: not an image file",
        "sample 'NEW001' has no valid row",
        "sample 'AAA001' has no valid row",
        "sample 'CCC001' has no valid row",
    ]
    for needle in needles:
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    assert len(problems) == len(needles)


def test_bad_values_are_quoted_as_written_in_the_csv(tmp_path):
    csv = make_dataset(tmp_path, GOOD)
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    cells = [line.split(",") for line in lines[1:]]
    cells[0][header.index("Permeability")] = "NaN"
    cells[1][header.index("Pixelsize")] = "-3.2"
    cells[2][header.index("Porosity")] = ""
    csv.write_text("\n".join([lines[0], *(",".join(c) for c in cells)]) + "\n")
    with pytest.raises(DataValidationError) as info:
        index_dataset(tmp_path, csv)
    message = str(info.value)
    assert "line 2 (sample 'AAA001'): Permeability must be a positive number, got NaN" in message
    assert "line 3 (sample 'AAA002'): Pixelsize must be a positive number, got -3.2" in message
    assert "line 4 (sample 'BBB001'): Porosity must be in [0, 1], got an empty cell" in message
    assert "np." not in message and "nan)" not in message
    assert message.startswith("6 problems in the data set:\n")


def test_one_problem_is_singular_and_names_the_input():
    assert str(DataValidationError(["q.png: no such query image"], what="query image")) == (
        "1 problem in the query image:\n  - q.png: no such query image"
    )

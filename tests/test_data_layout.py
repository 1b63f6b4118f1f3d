"""Tests for rockir_jax.data.layout: sample names of flat files, and scanning split and database folders;
and that what rockir_jax.data.writer writes is what the scans read."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from rockir_jax.data import writer
from rockir_jax.data.layout import (
    FLAT_SPLIT,
    SPLITS,
    sample_folder,
    sample_from_filename,
    scan_database,
    scan_split,
    slice_filename,
)


def test_sample_from_filename_rule():
    assert sample_from_filename("E002M0_slice1.png") == "E002M0"
    assert sample_from_filename("E002M0_slice_12.tif") == "E002M0"
    assert sample_from_filename("rock_a_17.png") == "rock_a"
    assert sample_from_filename("plain.png") == "plain"


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4)).save(path)
    return path


def test_training_scan_reports_what_does_not_fit_and_a_database_scan_skips_it(tmp_path):
    a = _image(tmp_path / "train" / "A01" / "s0.png")
    b = _image(tmp_path / "db_test" / "B01_slice3.png")
    (tmp_path / "train" / "stray.txt").write_text("x")
    (tmp_path / "train" / "A01" / "notes.txt").write_text("x")
    (tmp_path / "train" / "A01" / ".DS_Store").write_text("x")
    (tmp_path / "db_test" / "README.md").write_text("x")
    problems: list[str] = []
    assert scan_split(tmp_path, "train", problems) == [(a, "A01")]
    assert len(problems) == 2
    assert any("stray.txt: file outside a sample folder" in p for p in problems)
    assert any("notes.txt: not an image file" in p for p in problems)
    assert scan_database(tmp_path, "db_test") == [(b, "B01")]
    assert scan_database(tmp_path, "all") == [(a, "A01"), (b, "B01")]
    assert scan_database(tmp_path / "db_test", "ignored for a flat folder") == [(b, "B01")]
    with pytest.raises(FileNotFoundError, match="no such split"):
        scan_database(tmp_path, "val")


def test_written_samples_are_scanned_back_under_their_names(tmp_path):
    assert sample_from_filename(slice_filename("E002M0", 12)) == "E002M0"
    images = [np.full((6, 6), value, np.uint8) for value in (0, 128, 255)]
    written = {split: writer.write_sample(tmp_path, split, f"S{i}", images) for i, split in enumerate(SPLITS)}
    assert written[FLAT_SPLIT][0] == tmp_path / FLAT_SPLIT / slice_filename("S2", 0)
    assert written["train"][0].parent == sample_folder(tmp_path, "train", "S0") == tmp_path / "train" / "S0"
    for i, split in enumerate(SPLITS):
        problems: list[str] = []
        assert scan_split(tmp_path, split, problems) == [(path, f"S{i}") for path in written[split]]
        assert problems == []
    np.testing.assert_array_equal(np.asarray(Image.open(written["val"][1])), images[1])


def test_metadata_frame_orders_rows_and_columns(tmp_path):
    rows = [
        {"Created_label": "B", "x": 1.0, "Porosity": 0.2, "source": "lab"},
        {"Created_label": "A", "Porosity": 0.1, "y": 2, "source": "computed"},
    ]
    frame = writer.metadata_frame(rows, first=("Created_label", "Porosity", "absent"), last=("source",))
    assert list(frame.columns) == ["Created_label", "Porosity", "y", "x", "source"]  # y comes first in A
    assert list(frame["Created_label"]) == ["A", "B"] and math.isnan(frame["x"].iloc[0])
    path = writer.write_metadata(tmp_path, frame)
    assert path.read_text().splitlines()[1] == "A,0.1,2,,computed"


def test_records_are_strict_json_and_contact_sheets_are_grids(tmp_path):
    path = writer.write_record(tmp_path / "record.json", {"r2": float("nan"), "n": [1, 2]})
    assert json.loads(path.read_text()) == {"r2": None, "n": [1, 2]}
    tile = np.full((8, 8), 100, np.uint8)
    file = tmp_path / "tile.png"
    Image.fromarray(tile).save(file)
    sheet = writer.contact_sheet([[(tile, "a"), (file, "")], [(tile, "")]], tmp_path / "sheet.png", 16, 4)
    with Image.open(sheet) as image:
        assert image.mode == "L" and image.size == (2 * 16, 2 * (16 + 4))
        pixels = np.asarray(image)
    assert (pixels[4:, :] != 255).any() and (pixels[20 + 4 :, 16:] == 255).all()  # 2nd row: one tile

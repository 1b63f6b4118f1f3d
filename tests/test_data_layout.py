"""Tests for rockir_jax.data.layout: sample names of flat files, and scanning split and database folders."""

import pytest
from PIL import Image

from rockir_jax.data.layout import sample_from_filename, scan_database, scan_split


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

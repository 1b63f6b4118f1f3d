"""Tests for rockir_jax.data.inspect and rockir-inspect: summary text, contact sheet, command line."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rockir_jax.data.inspect import summarize, write_contact_sheet
from rockir_jax.data.metadata import index_dataset


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    for split, sample, pixel_size in [("train", "AAA001", 2.0), ("train", "BBB001", 1.0),
                                      ("val", "AAA002", 1.0)]:  # fmt: skip
        (tmp_path / split / sample).mkdir(parents=True)
        for k in range(2):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels, "RGB").save(tmp_path / split / sample / f"s{k}.png")
        rows.append(
            {"Created_label": sample, "Porosity": 0.1 + 0.1 * len(rows),
             "Permeability": 40.0 * 10 ** len(rows), "Pixelsize": pixel_size}
        )  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "metadata.csv", index=False)
    return tmp_path


def test_summary_lists_splits_and_physical_ranges(dataset):
    text = summarize(index_dataset(dataset, dataset / "metadata.csv"))
    assert "samples: 3, reservoirs: 2 (AAA, BBB)" in text
    assert "train: 4 images, 2 samples, 2 reservoirs; porosity 0.100 .. 0.200" in text
    # Back in CSV units (x Pixelsize**2 undone correctly): 40 and 400.
    assert "permeability 40 .. 400" in text
    assert "val: 2 images, 1 samples, 1 reservoirs" in text


@pytest.mark.parametrize("cached", [False, True])
def test_contact_sheet_is_written(dataset, tmp_path, cached):
    out = write_contact_sheet(
        index_dataset(dataset, dataset / "metadata.csv"),
        image_size=32,
        out=tmp_path / "sheets" / "pairs.png",
        cache_dir=tmp_path / "cache" if cached else None,
        num_pairs=4,
    )
    with Image.open(out) as sheet:
        assert sheet.format == "PNG" and sheet.width > 100 and sheet.height > 200


def test_command_line_with_config_writes_only_its_sheet(dataset, tmp_path):
    """The config's ``~/…`` cache lands in the home folder, not in a ``./~`` beside the user."""
    config = tmp_path / "config.py"
    config.write_text(
        "import ml_collections\n\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.image_size = 32\n"
        f"    c.data = ml_collections.ConfigDict(dict(root={str(dataset)!r},\n"
        f"        metadata={str(dataset / 'metadata.csv')!r}, cache_dir='~/rockir_cache'))\n"
        "    return c\n"
    )
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = os.environ | {"HOME": str(home), "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "rockir_jax.cli.inspect", f"--config={config}", "--out=sheet.png"],
        capture_output=True,
        text=True,
        check=False,
        cwd=work,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "train: 4 images" in done.stdout and "contact sheet: sheet.png" in done.stdout
    assert sorted(p.name for p in work.iterdir()) == ["sheet.png"]
    assert list((home / "rockir_cache").glob("32px-*/rockir_images/*/rockir_tables.json"))


def test_command_refuses_a_broken_data_set(dataset, tmp_path, capsys):
    from rockir_jax.cli.inspect import main

    (dataset / "train" / "AAA001" / "junk.txt").write_text("x")
    with pytest.raises(SystemExit) as exited:
        main(
            [
                "--root",
                str(dataset),
                "--metadata",
                str(dataset / "metadata.csv"),
                "--out",
                str(tmp_path / "x.png"),
            ]
        )
    assert exited.value.code == 2
    assert "junk.txt: not an image file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()

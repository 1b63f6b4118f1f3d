"""Writing a data set in the layout training reads: slice images, the metadata CSV, a JSON record and a
contact sheet.

The one writer behind ``rockir-prepare`` (:mod:`rockir_jax.volumes.volume_dataset`) and
``rockir-synthesize`` (:mod:`rockir_jax.synth.dataset`): file and folder names come from
:mod:`rockir_jax.data.layout`, so both write exactly what the readers scan; JSON goes through
:mod:`rockir_jax.jsonio` (strict: undefined numbers as ``null``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from rockir_jax.data.layout import METADATA_CSV, sample_folder, slice_filename
from rockir_jax.jsonio import json_text

Tile = tuple[np.ndarray | Path, str]
"""A contact sheet's tile: an 8-bit image (an array, or a file to read) and its caption ("" for none)."""


def write_slices(folder: Path, name: str, images: Iterable[np.ndarray]) -> list[str]:
    """Writes sample ``name``'s 8-bit slices as ``<name>_sliceN.png`` into ``folder``; their file names.

    Lossless, optimised PNG: a rerun with the same images writes the same bytes.
    """
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for number, image in enumerate(images):
        files.append(slice_filename(name, number))
        Image.fromarray(image, mode="L").save(folder / files[-1], format="PNG", optimize=True)
    return files


def write_sample(root: Path, split: str, name: str, images: Iterable[np.ndarray]) -> list[Path]:
    """Writes a sample's slices where the layout puts them in ``split`` (``db_test`` flat); their paths."""
    folder = sample_folder(root, split, name)
    return [folder / file for file in write_slices(folder, name, images)]


def copy_slices(root: Path, source: Path, name: str, splits: Mapping[str, str]) -> None:
    """Copies sample ``name``'s slice files from ``source`` into the layout, each file (a key of
    ``splits``) into its own split, so one sample's slices may go to several splits."""
    for file, split in splits.items():
        target = sample_folder(root, split, name)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / file, target / file)


def metadata_frame(
    rows: Iterable[Mapping[str, Any]], first: Sequence[str] = (), last: Sequence[str] = ()
) -> pd.DataFrame:
    """The metadata CSV's table: one row per sample, sorted by ``Created_label``.

    Columns: those of ``first`` that occur, the others in the order they first occur in the sorted rows,
    then those of ``last`` that occur; a value a row lacks is empty.
    """
    frame = pd.DataFrame(sorted(rows, key=lambda row: row["Created_label"]))
    lead = [c for c in first if c in frame.columns]
    tail = [c for c in last if c in frame.columns and c not in lead]
    return frame[lead + [c for c in frame.columns if c not in lead + tail] + tail]


def write_metadata(root: Path, frame: pd.DataFrame) -> Path:
    """``<root>/metadata.csv`` with full float precision, so a regeneration can be compared exactly."""
    path = root / METADATA_CSV
    frame.to_csv(path, index=False, float_format="%.10g")
    return path


def write_record(path: Path, record: Any) -> Path:
    """``record`` as strict, indented JSON at ``path`` (NaN and infinities as ``null``)."""
    path.write_text(json_text(record))
    return path


def contact_sheet(
    rows: Sequence[Sequence[Tile]], path: Path, tile: int, label: int, columns: int | None = None
) -> Path:
    """A grey PNG of ``rows`` of tiles: each image resized to ``tile`` px square under a ``label`` px
    band holding its caption (which may run on over the next tiles' bands); ``columns`` wide (default:
    the longest row)."""
    columns = columns or max(len(row) for row in rows)
    sheet = Image.new("L", (columns * tile, len(rows) * (tile + label)), 255)
    draw = ImageDraw.Draw(sheet)
    for number, row in enumerate(rows):
        y = number * (tile + label)
        for column, (image, _) in enumerate(row):
            sheet.paste(_tile_image(image, tile), (column * tile, y + label))
        for column, (_, caption) in enumerate(row):
            if caption:
                draw.text((column * tile + 2, y), caption, fill=0)
    sheet.save(path, format="PNG", optimize=True)
    return path


def _tile_image(image: np.ndarray | Path, side: int) -> Image.Image:
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("L").resize((side, side))
    with Image.open(image) as opened:
        return opened.convert("L").resize((side, side))

"""The data set layout training reads: ``train/<sample>/``, ``val/<sample>/``, flat ``db_test/``."""

from __future__ import annotations

from pathlib import Path


def slice_filename(name: str, slice_number: int) -> str:
    """The original's file naming, ``<sample>_sliceN.png``."""
    return f"{name}_slice{slice_number}.png"


def sample_folder(root: Path, split: str, name: str) -> Path:
    """Where a sample's slices go: ``<root>/<split>/<name>/``, or flat ``<root>/db_test/``."""
    return root / split if split == "db_test" else root / split / name

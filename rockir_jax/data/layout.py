"""The data set's folder layout and file naming: the one place that knows where images are.

The original RockIR's layout::

    <root>/train/<sample>/*.png     one folder per sample
    <root>/val/<sample>/*.png       optional
    <root>/db_test/*.png            optional, flat; the sample comes from the file name
    metadata.csv                    one row per sample

Writers (:mod:`rockir_jax.data.writer`) name files and folders with :func:`slice_filename` and
:func:`sample_folder`, so what they write is what the scans here read. How a flat file's name gives its
sample: docs/internals.md.
"""

from __future__ import annotations

import re
from pathlib import Path

SPLITS = ("train", "val", "db_test")
FLAT_SPLIT = "db_test"
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
METADATA_CSV = "metadata.csv"

_SLICE = re.compile(r"^(.+?)_slice.*$")
_TRAILING_NUMBER = re.compile(r"^(.+)_\d+$")


def slice_filename(name: str, slice_number: int) -> str:
    """The original's file naming, ``<sample>_sliceN.png``; :func:`sample_from_filename` inverts it."""
    return f"{name}_slice{slice_number}.png"


def sample_folder(root: Path, split: str, name: str) -> Path:
    """Where sample ``name``'s slices of ``split`` go: ``<root>/<split>/<name>/``, or flat
    ``<root>/<FLAT_SPLIT>/``."""
    return root / split if split == FLAT_SPLIT else root / split / name


def sample_from_filename(filename: str) -> str:
    """Sample name of a flat ``db_test`` file (see the module docstring for the rule)."""
    stem = Path(filename).stem
    for pattern in (_SLICE, _TRAILING_NUMBER):
        match = pattern.match(stem)
        if match:
            return match.group(1)
    return stem


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of the accepted image suffixes."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _visible(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def scan_folder(folder: Path, flat: bool, problems: list[str] | None = None) -> list[tuple[Path, str]]:
    """``(image path, sample name)`` of every image in one split folder, sorted.

    ``flat``: images directly in ``folder``, their sample from the file name (``db_test``); otherwise one
    sub-folder per sample. With a ``problems`` list, anything that does not fit (a stray file, a
    non-image, an empty sample folder) is reported there, as training requires; without it such
    entries are skipped, as a database folder may hold a CSV or README beside its images.
    """
    found: list[tuple[Path, str]] = []

    def report(message: str) -> None:
        if problems is not None:
            problems.append(message)

    def add_file(path: Path, sample: str) -> None:
        if path.is_dir():
            report(f"{path}: unexpected directory (expected image files)")
        elif not is_image_file(path):
            report(f"{path}: not an image file (accepted: {', '.join(IMAGE_SUFFIXES)})")
        else:
            found.append((path, sample))

    if flat:
        for path in _visible(folder):
            add_file(path, sample_from_filename(path.name))
        return found
    for entry in _visible(folder):
        if not entry.is_dir():
            report(f"{entry}: file outside a sample folder in {folder.name}/")
            continue
        files = _visible(entry)
        if not files:
            report(f"{entry}: sample folder has no images")
        for path in files:
            add_file(path, entry.name)
    return found


def scan_split(root: Path, split: str, problems: list[str] | None = None) -> list[tuple[Path, str]]:
    """:func:`scan_folder` of ``<root>/<split>`` in the split layout (``db_test`` flat, others not)."""
    return scan_folder(root / split, flat=split == FLAT_SPLIT, problems=problems)


def scan_database(db: Path, split: str) -> list[tuple[Path, str]]:
    """``(image, sample)`` of a database folder: a flat folder, or one split (or ``"all"``) of a root."""
    present = [s for s in SPLITS if (db / s).is_dir()]
    if not present:
        return scan_folder(db, flat=True)
    if split not in (*present, "all"):
        raise FileNotFoundError(f"{db / split}: no such split (found {', '.join(present)}; or use 'all')")
    chosen = present if split == "all" else [split]
    return [item for name in chosen for item in scan_split(db, name)]

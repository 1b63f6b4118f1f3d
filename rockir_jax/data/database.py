"""A database folder of images (flat, or a split-layout root) as a :class:`SplitTable`, with metadata.

A metadata CSV is optional. A name (folder, or the sample part of a flat file's name) found in it, by
``Created_label`` or ``Image`` (:func:`rockir_jax.data.metadata.sample_lookup`), becomes that sample
(its ``Image``) with its true porosity, permeability, pixel size and reservoir; other images keep the
naming rule (:mod:`rockir_jax.data.layout`), the reservoir from their name's first 3 characters and
unknown (NaN) metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from rockir_jax.data.layout import IMAGE_SUFFIXES, scan_database, scan_split
from rockir_jax.data.metadata import (
    RESERVOIR_COLUMN,
    DataValidationError,
    SplitTable,
    TargetSpec,
    compute_targets,
    read_metadata,
    reservoir_from_sample,
    sample_lookup,
)
from rockir_jax.images import check_image

DEFAULT_SPLIT = "db_test"
DEFAULT_TARGETS = TargetSpec()


def image_table(
    files: Sequence[tuple[str | Path, str]],
    metadata: pd.DataFrame | None = None,
    target_spec: TargetSpec = DEFAULT_TARGETS,
) -> SplitTable:
    """A :class:`SplitTable` of ``(path, name)`` pairs, metadata from ``metadata`` (a frame of
    :func:`rockir_jax.data.metadata.read_metadata`) where the name is in it, NaN elsewhere."""
    lookup = {} if metadata is None else sample_lookup(metadata)
    samples = np.array([lookup.get(name, name) for _, name in files], dtype=str)
    known = np.array([name in lookup for _, name in files], dtype=bool)
    n_targets = len(target_spec.names)
    targets = np.full((len(files), n_targets), np.nan, np.float32)
    pixel_size = np.full(len(files), np.nan)
    reservoirs = np.array([reservoir_from_sample(s) for s in samples], dtype=str)
    if known.any():
        rows = metadata.loc[samples[known]]
        pixel_size[known] = rows["Pixelsize"].astype(float).to_numpy()
        targets[known] = compute_targets(
            rows["Porosity"].astype(float).to_numpy(),
            rows["Permeability"].astype(float).to_numpy(),
            pixel_size[known],
            target_spec,
            rows[list(target_spec.extra)].astype(float).to_numpy() if target_spec.extra else None,
        )
        reservoirs = reservoirs.astype(object)
        reservoirs[known] = rows[RESERVOIR_COLUMN].astype(str).to_numpy()
        reservoirs = reservoirs.astype(str)
    ids = lambda names: np.unique(names, return_inverse=True)[1].astype(np.int32)
    return SplitTable(
        paths=tuple(str(p) for p, _ in files),
        samples=samples,
        sample_ids=ids(samples),
        reservoirs=reservoirs,
        reservoir_ids=ids(reservoirs),
        targets=targets,
        pixel_size=pixel_size,
    )


def list_images(
    db: str | Path,
    metadata_csv: str | Path | None = None,
    split: str = DEFAULT_SPLIT,
    target_spec: TargetSpec = DEFAULT_TARGETS,
) -> SplitTable:
    """Every image of the database folder ``db`` (layouts: module docstring), sorted, each decoded
    once to check it; raises :class:`DataValidationError` naming every unreadable file."""
    # Absolute paths: a saved index is searched from any working directory.
    db = Path(db).absolute()
    if not db.is_dir():
        raise FileNotFoundError(f"{db}: no such database folder")
    files = scan_database(db, split)
    if not files:
        raise DataValidationError([f"{db}: no images ({', '.join(IMAGE_SUFFIXES)}) in it"], what="database")
    problems = [p for p in map(check_image, (path for path, _ in files)) if p is not None]
    if problems:
        raise DataValidationError(problems, what="database")
    metadata = read_metadata(metadata_csv, target_spec) if metadata_csv is not None else None
    return image_table(files, metadata, target_spec)


def training_samples(
    db: str | Path, metadata_csv: str | Path | None = None, target_spec: TargetSpec = DEFAULT_TARGETS
) -> set[str] | None:
    """The samples of ``<db>/train/`` when ``db`` is a split-layout root that has one (names resolved
    with the metadata CSV as :func:`image_table` does), else None: unknown."""
    db = Path(db)
    if not (db / "train").is_dir():
        return None
    files = scan_split(db, "train")
    metadata = read_metadata(metadata_csv, target_spec) if metadata_csv is not None else None
    return set(image_table(files, metadata, target_spec).samples.tolist())

"""Metadata CSV schema, regression targets and data-set validation (image reading: :mod:`rockir_jax.images`).

The CSV is the original's, one row per sample (README, "Data", lists its columns); every image's targets
come from its own sample's row. :func:`index_dataset` validates everything before training and raises one
:class:`DataValidationError` listing every problem, each naming its file or CSV line.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from rockir_jax.data.layout import FLAT_SPLIT, SPLITS, scan_split
from rockir_jax.images import check_image

FOLDER_COLUMN = "Created_label"
"""The name of a sample's training folder."""
SAMPLE_COLUMN = "Image"
"""The sample's real name (``db_test`` files are ``<Image>_slice<N>``); optional, else FOLDER_COLUMN."""
RESERVOIR_COLUMN = "Reservoir"
REQUIRED_COLUMNS = (FOLDER_COLUMN, "Porosity", "Permeability", "Pixelsize")


class DataValidationError(ValueError):
    """The input has problems; ``problems`` lists every one, each naming its file or CSV line.

    ``what`` names the input in the first line of the message: ``"data set"``, ``"database"``,
    ``"query image"``, ``"metadata CSV"``.
    """

    def __init__(self, problems: Sequence[str], what: str = "data set"):
        self.problems = list(problems)
        self.what = what
        count = "1 problem" if len(self.problems) == 1 else f"{len(self.problems)} problems"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{count} in the {what}:\n{lines}")


# ------------------------------------------------------------------------------------------------
# Targets


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """How the regression targets are built from a sample's CSV row.

    ``targets = [Porosity, log10(Permeability / Pixelsize**2) / log_permeability_divisor, *extra]``;
    without ``divide_by_pixel_area`` the permeability is not divided by ``Pixelsize**2``. Extra
    columns are used as they are.
    """

    log_permeability_divisor: float = 5.0
    divide_by_pixel_area: bool = True
    extra: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return ("porosity", "log_permeability", *self.extra)


def compute_targets(
    porosity: np.ndarray,
    permeability: np.ndarray,
    pixel_size: np.ndarray,
    spec: TargetSpec = TargetSpec(),
    extra: np.ndarray | None = None,
) -> np.ndarray:
    """Targets ``(N, 2 + len(spec.extra))`` float32 from per-row physical values (TargetSpec)."""
    porosity = np.asarray(porosity, np.float64)
    permeability = np.asarray(permeability, np.float64)
    area = np.asarray(pixel_size, np.float64) ** 2 if spec.divide_by_pixel_area else 1.0
    log_perm = np.log10(permeability / area) / spec.log_permeability_divisor
    columns = [porosity, log_perm]
    if spec.extra:
        columns.extend(np.asarray(extra, np.float64).reshape(len(porosity), -1).T)
    return np.stack(columns, axis=-1).astype(np.float32)


def targets_to_physical(
    targets: np.ndarray, pixel_size: np.ndarray | float, spec: TargetSpec = TargetSpec()
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`compute_targets`: (porosity, permeability in the CSV's units).

    Multiplies back by ``Pixelsize**2`` (the original displayed ``10**(5 * pred)`` without it).
    """
    targets = np.asarray(targets, np.float64)
    area = np.asarray(pixel_size, np.float64) ** 2 if spec.divide_by_pixel_area else 1.0
    permeability = 10.0 ** (targets[..., 1] * spec.log_permeability_divisor) * area
    return targets[..., 0], permeability


def same_metadata(d0: np.ndarray, d1: np.ndarray, tol: float = 0.1) -> np.ndarray:
    """``sum(|(d0 - d1) / d1|) < tol`` over the last axis, per pair (boolean array).

    A term where ``d0 == d1`` counts as 0, so identical targets match even when a component is 0
    (the plain formula gives 0/0 = NaN there, i.e. "different").
    """
    d0 = np.asarray(d0, np.float64)
    d1 = np.asarray(d1, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(d0 == d1, 0.0, np.abs((d0 - d1) / d1))
    return rel.sum(axis=-1) < tol


# ------------------------------------------------------------------------------------------------
# Sample naming


def reservoir_from_sample(sample: str) -> str:
    """The original naming convention: the first 3 characters of the sample's name (``Image``)."""
    return sample[:3]


def sample_lookup(metadata: pd.DataFrame) -> dict[str, str]:
    """Every name that identifies a sample of ``metadata`` (a frame of :func:`read_metadata`) → the
    sample (its ``Image``): its ``Created_label`` and its ``Image``; ``Created_label`` wins a clash."""
    return dict(zip(metadata.index, metadata.index, strict=True)) | dict(
        zip(metadata[FOLDER_COLUMN], metadata.index, strict=True)
    )


# ------------------------------------------------------------------------------------------------
# Index


@dataclasses.dataclass(frozen=True)
class SplitTable:
    """All images of one split, one row per image, in a fixed (sorted) order."""

    paths: tuple[str, ...]
    samples: np.ndarray  # (N,) str
    sample_ids: np.ndarray  # (N,) int32, into DatasetIndex.samples
    reservoirs: np.ndarray  # (N,) str
    reservoir_ids: np.ndarray  # (N,) int32, into DatasetIndex.reservoirs
    targets: np.ndarray  # (N, T) float32
    pixel_size: np.ndarray  # (N,) float64

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class DatasetIndex:
    """A validated data set: per-split tables and vocabularies shared by all splits."""

    root: Path
    metadata_csv: Path
    csv_sha256: str
    target_spec: TargetSpec
    samples: tuple[str, ...]  # sample_id -> name
    reservoirs: tuple[str, ...]  # reservoir_id -> name
    splits: dict[str, SplitTable]

    @property
    def target_names(self) -> tuple[str, ...]:
        return self.target_spec.names


def _read_metadata_csv(
    csv_path: Path, spec: TargetSpec, problems: list[str]
) -> tuple[pd.DataFrame | None, str]:
    """The CSV indexed by sample (``Image``) with ``Reservoir`` filled in, rows that have problems
    reported (and kept out)."""
    try:
        raw = csv_path.read_bytes()
        # Names stay text: "001" must match a folder called 001, not become the number 1.
        names = (FOLDER_COLUMN, SAMPLE_COLUMN, RESERVOIR_COLUMN)
        frame = pd.read_csv(csv_path, dtype={c: str for c in names})
        # Every cell as written, for messages: "NaN", "-3.2" or an empty cell, not np.float64(nan).
        written = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except Exception as e:  # any read or parse failure is reported with its reason
        problems.append(f"{csv_path}: cannot read metadata CSV ({type(e).__name__}: {e})")
        return None, ""
    digest = hashlib.sha256(raw).hexdigest()
    needed = (*REQUIRED_COLUMNS, *spec.extra)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        problems.append(f"{csv_path}: missing column(s) {', '.join(missing)}")
        return None, digest

    def line(i: int) -> str:
        # +2: the header is line 1 and pandas rows count from 0.
        return f"{csv_path} line {i + 2} (sample {written[FOLDER_COLUMN].iloc[i]!r})"

    def got(column: str, i: int) -> str:
        text = written[column].iloc[i].strip()
        return f"got {text}" if text else "got an empty cell"

    def blank(column: pd.Series) -> np.ndarray:
        return (column.isna() | (column.astype(str).str.strip() == "")).to_numpy()

    bad = np.zeros(len(frame), bool)
    for i in np.flatnonzero(blank(frame[FOLDER_COLUMN])):
        problems.append(f"{line(i)}: missing sample name in {FOLDER_COLUMN}")
        bad[i] = True
    if SAMPLE_COLUMN not in frame.columns:
        frame[SAMPLE_COLUMN] = frame[FOLDER_COLUMN]
    frame[SAMPLE_COLUMN] = frame[SAMPLE_COLUMN].where(~blank(frame[SAMPLE_COLUMN]), frame[FOLDER_COLUMN])
    # An Image given as a file name ("E002M0.raw") names the sample by its stem.
    frame[SAMPLE_COLUMN] = [
        Path(str(name)).stem if isinstance(name, str) else name for name in frame[SAMPLE_COLUMN]
    ]
    for column in (FOLDER_COLUMN, SAMPLE_COLUMN):
        names = frame[column]
        for name in names[names.duplicated(keep=False) & names.notna()].unique():
            rows = ", ".join(str(i + 2) for i in np.flatnonzero(names == name))
            problems.append(f"{csv_path} lines {rows}: duplicate {column} {name!r}")
            bad[(names == name).to_numpy()] = True

    def numeric(column: str) -> np.ndarray:
        return pd.to_numeric(frame[column], errors="coerce").to_numpy(np.float64)

    for column in ("Permeability", "Pixelsize"):
        values = numeric(column)
        for i in np.flatnonzero(~(values > 0)):  # also catches NaN and non-numeric entries
            problems.append(f"{line(i)}: {column} must be a positive number, {got(column, i)}")
            bad[i] = True
    porosity = numeric("Porosity")
    for i in np.flatnonzero(~((porosity >= 0) & (porosity <= 1))):
        problems.append(f"{line(i)}: Porosity must be in [0, 1], {got('Porosity', i)}")
        bad[i] = True
    for column in spec.extra:
        values = numeric(column)
        for i in np.flatnonzero(~np.isfinite(values)):
            problems.append(f"{line(i)}: {column} must be a finite number, {got(column, i)}")
            bad[i] = True
    if RESERVOIR_COLUMN in frame.columns:
        for i in np.flatnonzero(blank(frame[RESERVOIR_COLUMN])):
            problems.append(f"{line(i)}: missing {RESERVOIR_COLUMN}")
            bad[i] = True

    good = frame[~bad].copy()
    for column in (FOLDER_COLUMN, SAMPLE_COLUMN):
        good[column] = good[column].astype(str)
    if RESERVOIR_COLUMN not in good.columns:
        good[RESERVOIR_COLUMN] = [reservoir_from_sample(s) for s in good[SAMPLE_COLUMN]]
    good[RESERVOIR_COLUMN] = good[RESERVOIR_COLUMN].astype(str)
    return good.set_index(SAMPLE_COLUMN), digest


def read_metadata(metadata_csv: str | Path, spec: TargetSpec = TargetSpec()) -> pd.DataFrame:
    """The metadata CSV indexed by sample (``Image``), with its ``Created_label`` and ``Reservoir``
    columns; raises DataValidationError listing every bad row."""
    problems: list[str] = []
    frame, _ = _read_metadata_csv(Path(metadata_csv).absolute(), spec, problems)
    if problems:
        raise DataValidationError(problems, what="metadata CSV")
    assert frame is not None
    return frame


def _check_images(paths: Iterable[Path]) -> list[str]:
    # Decoding is mostly outside the GIL, so threads help on big data sets.
    with ThreadPoolExecutor(max_workers=4) as pool:
        return [p for p in pool.map(check_image, paths) if p is not None]


def index_dataset(
    root: str | Path,
    metadata_csv: str | Path,
    splits: Sequence[str] = SPLITS,
    extra_targets: Sequence[str] = (),
    target_spec: TargetSpec | None = None,
    disjoint_samples: bool = False,
) -> DatasetIndex:
    """Scans and validates ``root`` + ``metadata_csv`` (see the module docstring for the layout).

    ``train`` is required; ``val`` and ``db_test`` may be absent but not empty. Every image is
    decoded once to check it. ``extra_targets`` names further numeric CSV columns appended to the
    targets (``target_spec``, if given, wins). A sample with slices in several splits gets a warning,
    or, with ``disjoint_samples``, is a problem. Raises DataValidationError listing every problem.
    """
    # Absolute paths: the cache fingerprint must not depend on the working directory.
    root = Path(root).absolute()
    csv_path = Path(metadata_csv).absolute()
    spec = target_spec or TargetSpec(extra=tuple(extra_targets))
    problems: list[str] = []
    if not root.is_dir():
        raise DataValidationError([f"{root}: data root does not exist"])
    if not csv_path.is_file():
        problems.append(f"{csv_path}: metadata CSV does not exist")
        meta, digest = None, ""
    else:
        meta, digest = _read_metadata_csv(csv_path, spec, problems)

    scanned: dict[str, list[tuple[Path, str]]] = {}
    for split in splits:
        if not (root / split).is_dir():
            if split == "train":
                problems.append(f"{root / 'train'}: required split folder is missing")
            continue
        scanned[split] = scan_split(root, split, problems)
        if not scanned[split]:
            problems.append(f"{root / split}: split has no images")

    if meta is not None:
        scanned = _resolve_samples(scanned, meta, csv_path, problems)
    shared = shared_samples({split: [s for _, s in items] for split, items in scanned.items()})
    if disjoint_samples:
        problems += [
            f"sample {s!r} appears in both {' and '.join(f'{x}/' for x in where)}"
            for s, where in shared.items()
        ]
    elif shared:
        warnings.warn(
            f"{len(shared)} sample(s) have slices in several splits (a slice-level split): "
            + ", ".join(f"{s} ({'+'.join(where)})" for s, where in shared.items()),
            stacklevel=2,
        )
    problems.extend(_check_images(p for items in scanned.values() for p, _ in items))
    if problems:
        raise DataValidationError(problems)
    assert meta is not None
    return _build_index(root, csv_path, digest, spec, meta, scanned)


def limit_samples_per_reservoir(index: DatasetIndex, split: str, per_reservoir: int) -> DatasetIndex:
    """``index`` with ``split`` cut to the first ``per_reservoir`` samples (by name) of each reservoir,
    e.g. to train with few labelled samples; the other splits and the vocabularies stay as they are."""
    if per_reservoir < 1:
        raise ValueError(f"samples per reservoir must be at least 1, got {per_reservoir}")
    table = index.splits[split]
    kept: set[str] = set()
    for reservoir in np.unique(table.reservoirs):
        kept.update(sorted(set(table.samples[table.reservoirs == reservoir]))[:per_reservoir])
    rows = np.flatnonzero(np.isin(table.samples, sorted(kept)))
    limited = SplitTable(
        paths=tuple(table.paths[i] for i in rows),
        samples=table.samples[rows],
        sample_ids=table.sample_ids[rows],
        reservoirs=table.reservoirs[rows],
        reservoir_ids=table.reservoir_ids[rows],
        targets=table.targets[rows],
        pixel_size=table.pixel_size[rows],
    )
    return dataclasses.replace(index, splits=index.splits | {split: limited})


def shared_samples(samples_by_split: Mapping[str, Iterable[str]]) -> dict[str, tuple[str, ...]]:
    """The samples found in more than one split → those splits, in the given order."""
    where: dict[str, list[str]] = {}
    for split, samples in samples_by_split.items():
        for sample in dict.fromkeys(samples):
            where.setdefault(sample, []).append(split)
    return {s: tuple(splits) for s, splits in sorted(where.items()) if len(splits) > 1}


def _resolve_samples(
    scanned: dict[str, list[tuple[Path, str]]], meta: pd.DataFrame, csv_path: Path, problems: list[str]
) -> dict[str, list[tuple[Path, str]]]:
    """Folder and file names → samples (:func:`sample_lookup`); unknown names reported once each."""
    lookup = sample_lookup(meta)
    resolved: dict[str, list[tuple[Path, str]]] = {}
    reported: set[str] = set()
    for split, items in scanned.items():
        resolved[split] = []
        for path, name in items:
            if name in lookup:
                resolved[split].append((path, lookup[name]))
            elif name not in reported:
                where = path.parent if split != FLAT_SPLIT else path
                problems.append(
                    f"{where}: sample {name!r} has no valid row in {csv_path} "
                    f"(no {FOLDER_COLUMN} or {SAMPLE_COLUMN} {name!r})"
                )
                reported.add(name)
    return resolved


def _build_index(
    root: Path,
    csv_path: Path,
    digest: str,
    spec: TargetSpec,
    meta: pd.DataFrame,
    scanned: dict[str, list[tuple[Path, str]]],
) -> DatasetIndex:
    def reservoir(sample: str) -> str:
        return str(meta.at[sample, RESERVOIR_COLUMN])

    all_samples = sorted({s for items in scanned.values() for _, s in items})
    sample_vocab = {s: i for i, s in enumerate(all_samples)}
    reservoir_vocab = {r: i for i, r in enumerate(sorted({reservoir(s) for s in all_samples}))}

    tables = {}
    for split, items in scanned.items():
        samples = np.array([s for _, s in items], dtype=str)
        rows = meta.loc[samples]
        reservoirs = np.array([reservoir(s) for s in samples], dtype=str)
        pixel_size = rows["Pixelsize"].astype(float).to_numpy()
        targets = compute_targets(
            rows["Porosity"].astype(float).to_numpy(),
            rows["Permeability"].astype(float).to_numpy(),
            pixel_size,
            spec,
            rows[list(spec.extra)].astype(float).to_numpy() if spec.extra else None,
        )
        tables[split] = SplitTable(
            paths=tuple(str(p) for p, _ in items),
            samples=samples,
            sample_ids=np.array([sample_vocab[s] for s in samples], np.int32),
            reservoirs=reservoirs,
            reservoir_ids=np.array([reservoir_vocab[r] for r in reservoirs], np.int32),
            targets=targets,
            pixel_size=pixel_size,
        )
    return DatasetIndex(
        root=root,
        metadata_csv=csv_path,
        csv_sha256=digest,
        target_spec=spec,
        samples=tuple(sample_vocab),
        reservoirs=tuple(reservoir_vocab),
        splits=tables,
    )

"""3-D micro-CT volumes to the data set training reads: slices, a metadata CSV, physics the lab lacks.

Each volume (sample name = file stem) gives ``N`` 8-bit slices normal to the chosen axes, plus porosity and
permeability (snow2 + OpenPNM) wherever the lab CSV has no value; lab values win. Writing is atomic, and a
rerun reuses every finished volume whose file and settings have not changed. The files are written by
:mod:`rockir_jax.data.writer`; errors and warnings are logged, the rest comes back in the report. Windowing,
``Pixelsize`` and the atomic writes: docs/internals.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from rockir_jax.data import writer
from rockir_jax.data.layout import SPLITS, sample_folder
from rockir_jax.data.writer import Tile
from rockir_jax.physics import (
    MIN_PHASE_CONTRAST,
    Segmentation,
    permeability_lbm,
    permeability_voxel2,
    phase_contrast,
    quiet_network_tools,
    voxel2_to_millidarcy,
)
from rockir_jax.volumes.readers import RawSpec, Volume, VolumeError, find_volumes, open_volume, sample_name
from rockir_jax.volumes.slicing import (
    IntensityWindow,
    pixel_size_um,
    plan_slices,
    read_slices,
    to_training_image,
    voxel_sample,
)

LAB_NAME_COLUMNS = ("Created_label", "Sample", "Image")
LAB_VOXEL_COLUMNS = ("Voxelsize", "Pixelsize")
RECORD = "prepare.json"
CONTACT_SHEET = "contact_sheet.png"
SHEET_COLUMNS = 4  # slices of a sample on the contact sheet
# the metadata CSV's leading and trailing columns; the others (lab extras, per-axis values) in between
FIRST_COLUMNS = ("Created_label", "Image", "Porosity", "Permeability", "Pixelsize", "Reservoir", "Split")
SOURCE_COLUMNS = ("Porosity_source", "Permeability_source")

log = logging.getLogger(__name__)

FLOW_SOLVERS = {
    "network": "snow2 + Stokes flow",
    "lbm": "lattice Boltzmann (D3Q19 TRT) Stokes flow on the voxels",
}
"""The permeability solvers, by name: the pore network is fast, the voxel solve the reference."""


@dataclass(frozen=True)
class PrepareOptions:
    """Everything that determines the prepared data set besides the volumes and the lab CSV."""

    slices: int = 12
    axes: tuple[int, ...] = (0,)
    random_slices: bool = False
    seed: int = 0
    image_size: int | None = None
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    segmentation: Segmentation = field(default_factory=Segmentation)
    flow_size: int = 128
    flow: Literal["network", "lbm"] = "network"
    voxel_size_um: float | None = None
    raw: RawSpec | None = None
    dataset: str | None = None
    reservoir: str | None = None
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    split_by: Literal["sample", "slice"] = "sample"

    def __post_init__(self) -> None:
        if self.split_by not in ("sample", "slice"):
            raise ValueError(f"split_by is 'sample' or 'slice', got {self.split_by!r}")
        if (
            not self.axes
            or any(a not in (0, 1, 2) for a in self.axes)
            or len(set(self.axes)) != len(self.axes)
        ):
            raise ValueError(f"axes are distinct values of 0, 1, 2, got {self.axes}")
        if len(self.split_fractions) != 3 or min(self.split_fractions) < 0 or self.split_fractions[0] <= 0:
            raise ValueError(
                f"split fractions are train,val,db_test >= 0 with train > 0, got {self.split_fractions}"
            )
        if not 0 <= self.clip_percentiles[0] < self.clip_percentiles[1] <= 100:
            raise ValueError(f"clip percentiles need 0 <= low < high <= 100, got {self.clip_percentiles}")
        if self.flow not in FLOW_SOLVERS:
            raise ValueError(f"flow is one of {', '.join(FLOW_SOLVERS)}, got {self.flow!r}")
        if self.flow_size < 16:
            raise ValueError(f"flow sub-volume size must be at least 16 voxels, got {self.flow_size}")

    def volume_settings(self) -> dict[str, Any]:
        """The options a volume's slices and properties depend on (not the split)."""
        settings = asdict(self)
        settings.pop("split_fractions")
        settings.pop("split_by")
        if settings["flow"] == "network":
            # The default solver keeps the fingerprints of sets prepared before the choice existed.
            settings.pop("flow")
        return settings


@dataclass
class VolumeResult:
    """One prepared volume: its CSV row, slice files and where the values came from."""

    name: str
    status: str  # "ok", or "no_flow" for a volume that does not percolate (left out of the data set)
    message: str
    row: dict[str, Any]
    files: list[str]
    cuts: list[list[int]]
    fingerprint: str
    seconds: float
    split: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> VolumeResult:
        """The result of its JSON record (``result.json``, an entry of ``prepare.json``'s ``volumes``);
        an empty (``null``) value of the row is NaN again."""
        row = {k: np.nan if v is None else v for k, v in record["row"].items()}
        return cls(**{**record, "row": row})

    @classmethod
    def load(cls, path: Path) -> VolumeResult:
        """The result saved at ``path`` (``result.json``)."""
        return cls.from_record(json.loads(path.read_text()))


@dataclass
class PrepareReport:
    """What a run did: every volume's result, which were reused, and the wall time."""

    out: Path
    results: list[VolumeResult]
    reused: list[str]
    seconds: float


# --- the lab CSV ----------------------------------------------------------------------------------


def read_lab_csv(path: str | Path) -> pd.DataFrame:
    """Lab measurements indexed by sample name, checked; every problem is listed in one ValueError.

    The name column is ``Created_label``, ``Sample`` or ``Image``; optional ``Porosity`` (fraction),
    ``Permeability`` (mD), ``Voxelsize`` or ``Pixelsize`` (the volume's voxel edge, µm), ``Reservoir``
    and any further numeric columns, which are copied to the output. Empty cells are unmeasured.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={c: str for c in (*LAB_NAME_COLUMNS, "Reservoir")})
    except Exception as err:  # any read or parse failure is reported with its reason
        raise ValueError(f"{path}: cannot read the lab CSV ({type(err).__name__}: {err})") from None
    names = [c for c in LAB_NAME_COLUMNS if c in frame.columns]
    if not names:
        raise ValueError(f"{path}: needs a sample name column ({', '.join(LAB_NAME_COLUMNS)})")
    frame = frame.rename(columns={names[0]: "Sample"})
    problems = []

    def line(i: int) -> str:
        return f"{path} line {i + 2} (sample {frame['Sample'].iloc[i]!r})"

    for i in np.flatnonzero(frame["Sample"].isna()):
        problems.append(f"{line(i)}: missing sample name")
    for name in frame["Sample"][frame["Sample"].duplicated() & frame["Sample"].notna()].unique():
        problems.append(f"{path}: sample {name!r} appears more than once")
    for column, ok, rule in (
        ("Porosity", lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
        ("Permeability", lambda v: v > 0, "positive (mD)"),
        *((c, lambda v: v > 0, "positive (µm)") for c in LAB_VOXEL_COLUMNS),
    ):
        if column in frame.columns:
            values = pd.to_numeric(frame[column], errors="coerce")
            bad = frame[column].notna() & ~ok(values.fillna(-1.0))
            problems += [
                f"{line(i)}: {column} must be {rule}, got {frame[column].iloc[i]!r}"
                for i in np.flatnonzero(bad)
            ]
            frame[column] = values
    if problems:
        raise ValueError("problems in the lab CSV:\n" + "\n".join(f"  - {p}" for p in problems))
    return frame.set_index("Sample")


def _lab_values(lab: pd.DataFrame | None, name: str) -> dict[str, Any]:
    """The lab's non-empty values for sample ``name`` (numbers as floats)."""
    if lab is None or name not in lab.index:
        return {}
    row = lab.loc[name]
    return {k: (v if isinstance(v, str) else float(v)) for k, v in row.items() if not pd.isna(v)}


# --- one volume -----------------------------------------------------------------------------------


def _fingerprint(path: Path, options: PrepareOptions, lab: Mapping[str, Any]) -> str:
    """Changes when the volume's file, the settings its result depends on, or its lab row change."""
    files = sorted(path.iterdir()) if path.is_dir() else [path, path.with_suffix(".json")]
    stats = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file()]
    text = json.dumps(
        [str(path.absolute()), stats, options.volume_settings(), dict(lab)], sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pore_fraction(volume: Volume, segmentation: Segmentation, threshold: float, bar: tqdm) -> float:
    """Pore voxel fraction of the whole volume, counted a chunk at a time."""
    pores = 0
    for _, block in volume.chunks():
        pores += int(np.count_nonzero(segmentation.pore_mask(block, threshold)))
        bar.update(len(block))
    return pores / float(np.prod(volume.shape))


def _flow_box(shape: Sequence[int], size: int) -> tuple[slice, ...]:
    """The centred sub-volume of at most ``size`` voxels per axis."""
    return tuple(slice((n - min(n, size)) // 2, (n - min(n, size)) // 2 + min(n, size)) for n in shape)


def _stage(name: str, stage: str, total: int, unit: str) -> tqdm:
    return tqdm(total=total, desc=f"{name}: {stage}", unit=unit, leave=False)


def prepare_volume(
    path: Path, options: PrepareOptions, lab: Mapping[str, Any], folder: Path, fingerprint: str
) -> VolumeResult:
    """Slices and properties of the volume at ``path``; writes its PNGs into ``folder``.

    Raises VolumeError for an unusable volume (unreadable, constant, all solid or all pore, no voxel
    size). A volume that does not percolate gives ``status="no_flow"`` and no permeability.
    """
    start = time.perf_counter()
    name = sample_name(path)
    with open_volume(path, options.raw, options.dataset) as volume:
        voxel = lab.get("Voxelsize", lab.get("Pixelsize", volume.voxel_size_um or options.voxel_size_um))
        if voxel is None:
            raise VolumeError(
                f"{path}: no voxel size: give --voxel-size, a Voxelsize column in the lab CSV, "
                f'or "voxel_size_um" in {path.with_suffix(".json").name}'
            )
        sample = voxel_sample(volume)
        try:
            window = IntensityWindow.of(sample, options.clip_percentiles)
        except ValueError as err:
            raise VolumeError(f"{path}: {err}") from None
        random = None
        if options.random_slices:
            random = np.random.default_rng(
                np.random.SeedSequence(options.seed, spawn_key=(zlib.crc32(name.encode()),))
            )
        plan = plan_slices(volume.shape, options.slices, options.axes, random)
        # axis-0 slices are one plane each; any other axis costs one pass over every plane
        across = any(axis != 0 for axis, _ in plan.cuts)
        reads = sum(axis == 0 for axis, _ in plan.cuts) + (volume.shape[0] if across else 0)
        with _stage(name, "slices", reads, "plane") as bar:
            slices = read_slices(volume, plan, bar.update)
        images = (to_training_image(image, window, options.image_size) for image in slices)
        files = writer.write_slices(folder, name, images)
        row: dict[str, Any] = {
            "Created_label": name,
            "Image": name,
            "Pixelsize": pixel_size_um(voxel, slices[0].shape, options.image_size),
            "Voxelsize": voxel,
            "Size": options.image_size or min(slices[0].shape),
            "Depth": volume.shape[plan.axes[0]],
            "Intensity_low": window.low,
            "Intensity_high": window.high,
        }
        needs_porosity, needs_permeability = "Porosity" not in lab, "Permeability" not in lab
        status, message = "ok", ""
        if needs_porosity or needs_permeability:
            seg = options.segmentation
            threshold = seg.threshold(sample)
            contrast = phase_contrast(sample, threshold) if seg.method == "otsu" else np.inf
            if contrast < MIN_PHASE_CONTRAST:
                raise VolumeError(
                    f"{path}: no pore and solid phases to tell apart (Otsu's classes are {contrast:.1f} "
                    f"within-class standard deviations apart, less than {MIN_PHASE_CONTRAST:g}): a volume "
                    "of one phase? Give --threshold or --pore-label"
                )
            with _stage(name, "porosity", volume.shape[0], "plane") as bar:
                fraction = _pore_fraction(volume, seg, threshold, bar)
            how = seg.describe(threshold)
            if fraction in (0.0, 1.0):
                phase = "solid" if fraction == 0 else "pore"
                raise VolumeError(f"{path}: the volume is all {phase} with {how}; check the segmentation")
            row["Porosity"] = fraction
            row["Porosity_source"] = f"computed: pore fraction, {how}" if needs_porosity else "lab"
            if needs_permeability:
                row, status, message = _permeability(volume, row, options, threshold, how, voxel)
    for key, value in lab.items():
        if key not in ("Voxelsize", "Pixelsize"):
            row[key] = value
            if key in ("Porosity", "Permeability"):
                row[f"{key}_source"] = "lab"
    row.setdefault("Porosity", np.nan)
    return VolumeResult(
        name,
        status,
        message,
        row,
        files,
        [list(c) for c in plan.cuts],
        fingerprint,
        time.perf_counter() - start,
    )


def _solve_flow(pore: np.ndarray, axis: int, flow: str, label: str) -> float:
    """Permeability in voxel² by the chosen solver; the voxel solve shows its iterations and flux change,
    and says so when it stops unconverged."""
    if flow == "network":
        return permeability_voxel2(pore, axis)
    with tqdm(desc=f"{label}: lattice Boltzmann", unit="step", leave=False) as bar:

        def progress(step: int, change: float) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(flux_change=f"{change:.1e}")

        result = permeability_lbm(pore, axis, progress=progress)
    if not result.converged:
        log.warning("%s: %s", label, result.message)
    return result.k_voxel2


def _permeability(
    volume: Volume, row: dict[str, Any], options: PrepareOptions, threshold: float, how: str, voxel: float
) -> tuple[dict[str, Any], str, str]:
    """``row`` with the permeability along each slice axis, or the no-flow status and its message."""
    name = row["Created_label"]
    box = _flow_box(volume.shape, options.flow_size)
    with _stage(name, "permeability", len(options.axes) + 1, "step") as bar:
        pore = options.segmentation.pore_mask(
            volume.read(box[0].start, box[0].stop)[:, box[1], box[2]], threshold
        )
        bar.update()
        values = {}
        for axis in options.axes:
            values[axis] = _solve_flow(pore, axis, options.flow, f"{name} axis {axis}")
            bar.update()
    size = "x".join(str(n) for n in pore.shape)
    blocked = [a for a, k in values.items() if k == 0]
    if blocked:
        message = (
            f"{volume.path}: does not percolate along axis {', '.join(map(str, blocked))}: no face-connected "
            f"pore path from inlet to outlet in the centred {size} sub-volume ({how}); left out, no "
            "permeability invented"
        )
        return row, "no_flow", message
    millidarcy = {a: voxel2_to_millidarcy(k, voxel) for a, k in values.items()}
    if len(millidarcy) > 1:
        row |= {f"Permeability_axis{a}": k for a, k in millidarcy.items()}
    row["Permeability"] = float(np.exp(np.mean(np.log(list(millidarcy.values())))))
    mean = " (geometric mean over axes)" if len(millidarcy) > 1 else ""
    axes = ",".join(map(str, millidarcy))
    row["Permeability_source"] = (
        f"computed: {FLOW_SOLVERS[options.flow]} along axis {axes}{mean}, {size} sub-volume, {how}"
    )
    return row, "ok", ""


# --- the data set ---------------------------------------------------------------------------------


def assign_splits(
    names: Sequence[str], fractions: Sequence[float], seed: int | Sequence[int]
) -> dict[str, str]:
    """A split of ``names`` (samples, or one sample's slices): shuffled with ``seed``, then counts from
    ``fractions`` (train, val, db_test).

    Val and db_test get at least one sample when their fraction is positive and a training sample
    remains; train gets the rest.
    """
    order = sorted(names)
    np.random.default_rng(seed).shuffle(order)
    total = sum(fractions)
    counts = [0, 0]
    for i, fraction in enumerate(fractions[1:]):
        counts[i] = round(fraction / total * len(order))
        if fraction > 0 and counts[i] == 0 and len(order) - sum(counts) > 1:
            counts[i] = 1
    n_train = len(order) - sum(counts)
    if n_train < 1:
        raise ValueError(
            f"{len(order)} usable volume(s) leave no training sample with split {tuple(fractions)}"
        )
    splits = [split for split, n in zip(SPLITS, (n_train, *counts), strict=True) for _ in range(n)]
    return dict(zip(order, splits, strict=True))


def file_splits(result: VolumeResult, options: PrepareOptions) -> dict[str, str]:
    """The split of each of a sample's slice files: its sample's, or with ``split_by="slice"`` a split of
    the sample's own slices (seeded by ``options.seed`` and the sample's name)."""
    if options.split_by == "sample":
        return {file: result.split for file in result.files}
    seed = (options.seed, zlib.crc32(result.name.encode()))
    return assign_splits(result.files, options.split_fractions, seed)


def metadata_rows(results: Sequence[VolumeResult], reservoir: str | None) -> list[dict[str, Any]]:
    """The CSV rows training reads, one per usable sample, with its ``Split`` (module docstring).

    With a ``reservoir``, or a lab ``Reservoir`` for some samples, every row has one: the lab's, else
    ``reservoir``, else training's own fallback written out (the first 3 characters of the name).
    """
    rows = [dict(r.row, Split=r.split) for r in results]
    if reservoir is not None or any("Reservoir" in row for row in rows):
        for row in rows:
            row.setdefault("Reservoir", reservoir if reservoir is not None else row["Created_label"][:3])
    return rows


def sheet_rows(
    results: Sequence[VolumeResult], folders: Mapping[str, Path], per_sample: int = SHEET_COLUMNS
) -> list[list[Tile]]:
    """The contact sheet's rows, one per sample by name: up to ``per_sample`` of its slices, captioned
    with its split, porosity and permeability (lab or computed)."""
    rows = []
    for result in sorted(results, key=lambda r: r.name):
        picks = np.unique(
            np.linspace(0, len(result.files) - 1, min(per_sample, len(result.files))).round().astype(int)
        )
        values = result.row
        mark = {
            k: "lab" if values.get(f"{k}_source") == "lab" else "computed"
            for k in ("Porosity", "Permeability")
        }
        caption = (
            f"{result.name} [{result.split}]  porosity {values['Porosity']:.3f} ({mark['Porosity']})  "
            f"k {values['Permeability']:.3g} mD ({mark['Permeability']})"
        )
        files = [folders[result.name] / result.files[pick] for pick in picks]
        rows.append([(file, caption if i == 0 else "") for i, file in enumerate(files)])
    return rows


def _replace(target: Path, new: Path) -> None:
    """Puts ``new`` at ``target``, an existing ``target`` moved aside first and deleted after."""
    old = target.with_name(target.name + ".old")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _previous(out: Path) -> dict[str, VolumeResult]:
    """The volumes of a data set this function wrote before (empty when ``out`` does not exist)."""
    old = out.with_name(out.name + ".old")
    if not out.exists() and old.exists():
        os.replace(old, out)  # a run stopped between the two renames of _replace
    if not out.exists():
        return {}
    if not (out / RECORD).is_file():
        raise ValueError(
            f"{out}: exists and was not written by rockir-prepare (no {RECORD}); choose another --out"
        )
    record = json.loads((out / RECORD).read_text())
    return {name: VolumeResult.from_record(v) for name, v in record["volumes"].items()}


def prepare_dataset(
    inputs: Sequence[str | Path],
    out: str | Path,
    options: PrepareOptions = PrepareOptions(),
    lab_csv: str | Path | None = None,
) -> PrepareReport:
    """Prepares every volume in ``inputs`` and writes the data set to ``out`` (module docstring).

    Raises ValueError listing every unusable volume or lab CSV row; the data set is then not
    written, and the volumes that succeeded are kept for the rerun.
    """
    start = time.perf_counter()
    out = Path(out)
    paths = find_volumes([Path(p) for p in inputs])
    if not paths:
        raise FileNotFoundError(f"no volumes in {', '.join(map(str, inputs))}")
    by_name: dict[str, Path] = {}
    problems = []
    for path in paths:
        name = sample_name(path)
        if name in by_name:
            problems.append(f"{path}: sample name {name!r} is also {by_name[name]}'s")
        by_name[name] = path
    lab = read_lab_csv(lab_csv) if lab_csv is not None else None
    if lab is not None:
        for i, name in enumerate(lab.index):
            if name not in by_name:
                problems.append(
                    f"{lab_csv} line {i + 2}: sample {name!r} has no volume in {', '.join(map(str, inputs))}"
                )
    if problems:
        raise ValueError("cannot prepare:\n" + "\n".join(f"  - {p}" for p in problems))

    previous = _previous(out)
    partial = out.with_name(out.name + ".partial")
    work = partial / "volumes"
    work.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(partial / "dataset", ignore_errors=True)
    results: dict[str, VolumeResult] = {}
    folders: dict[str, Path] = {}
    reused: list[str] = []
    errors: list[str] = []
    quiet = False
    for name, path in tqdm(sorted(by_name.items()), desc="volumes", unit="volume"):
        values = _lab_values(lab, name)
        fingerprint = _fingerprint(path, options, values)
        done = work / name / "result.json"
        if done.is_file() and VolumeResult.load(done).fingerprint == fingerprint:
            results[name], folders[name] = VolumeResult.load(done), work / name
            reused.append(name)
            continue
        before = previous.get(name)
        if before is not None and before.fingerprint == fingerprint:
            results[name] = before
            folders[name] = sample_folder(out, before.split, name) if before.split else out
            reused.append(name)
            continue
        if not quiet:
            quiet_network_tools()  # only once a volume is computed: importing porespy takes seconds
            quiet = True
        tmp = work / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(work / name, ignore_errors=True)
        tmp.mkdir()
        try:
            result = prepare_volume(path, options, values, tmp, fingerprint)
        except VolumeError as err:
            errors.append(str(err))
            shutil.rmtree(tmp)
            log.error("%s", err)
            continue
        if result.status != "ok":
            log.warning("%s", result.message)
        writer.write_record(tmp / "result.json", asdict(result))
        os.replace(tmp, work / name)
        results[name], folders[name] = result, work / name
    if errors:
        kept = f"; the {len(results)} finished volume(s) are kept in {work} for the rerun" if results else ""
        raise ValueError(
            f"{len(errors)} volume(s) unusable, {out} not written{kept}:\n"
            + "\n".join(f"  - {e}" for e in errors)
        )

    usable = [r for r in results.values() if r.status == "ok"]
    if not usable:
        raise ValueError(f"no volume percolates, so no sample has a permeability; {out} not written")
    if options.split_by == "slice":
        splits = {r.name: "slices" for r in usable}
    else:
        splits = assign_splits([r.name for r in usable], options.split_fractions, options.seed)
    for result in results.values():
        result.split = splits.get(result.name)
    unchanged = previous.keys() == results.keys() and all(
        previous[n].fingerprint == r.fingerprint and previous[n].split == r.split for n, r in results.items()
    )
    if not unchanged:
        _assemble(out, partial, results, folders, options)
    shutil.rmtree(partial, ignore_errors=True)
    return PrepareReport(
        out, sorted(results.values(), key=lambda r: r.name), reused, time.perf_counter() - start
    )


def _assemble(
    out: Path,
    partial: Path,
    results: Mapping[str, VolumeResult],
    folders: Mapping[str, Path],
    options: PrepareOptions,
) -> None:
    """Writes the data set into ``<partial>/dataset`` and renames it to ``out``."""
    dataset = partial / "dataset"
    usable = [r for r in results.values() if r.status == "ok"]
    for result in usable:
        writer.copy_slices(dataset, folders[result.name], result.name, file_splits(result, options))
    rows = metadata_rows(usable, options.reservoir)
    writer.write_metadata(dataset, writer.metadata_frame(rows, FIRST_COLUMNS, SOURCE_COLUMNS))
    sheet = sheet_rows(usable, folders)
    writer.contact_sheet(sheet, dataset / CONTACT_SHEET, tile=96, label=14, columns=SHEET_COLUMNS)
    record = {
        "options": options.volume_settings()
        | {"split_fractions": list(options.split_fractions), "split_by": options.split_by},
        "volumes": {name: asdict(r) for name, r in sorted(results.items())},
    }
    writer.write_record(dataset / RECORD, record)
    _replace(out, dataset)


def summary_table(report: PrepareReport) -> str:
    """The end-of-run table: a line per volume, then totals of slices, computed and lab values, time."""
    header = ("volume", "split", "slices", "porosity", "k (mD)", "values", "time")
    lines = ["{:<16} {:<8} {:>6} {:>9} {:>10}  {:<28} {:>7}".format(*header)]
    computed = lab = 0
    for r in report.results:
        if r.status != "ok":
            left_out = "{:<16} {:<8} {:>6} {:>9} {:>10}  {:<28}".format(r.name, *"----", "no flow: left out")
            lines.append(f"{left_out} {r.seconds:>6.1f}s")
            continue
        kinds = []
        for key in ("Porosity", "Permeability"):
            source = "lab" if r.row.get(f"{key}_source", "lab") == "lab" else "computed"
            computed, lab = computed + (source == "computed"), lab + (source == "lab")
            kinds.append(source)
        reused = " (reused)" if r.name in report.reused else ""
        porosity, permeability = r.row["Porosity"], r.row["Permeability"]
        lines.append(
            f"{r.name:<16} {r.split:<8} {len(r.files):>6} {porosity:>9.4f} {permeability:>10.4g}  "
            f"{'/'.join(kinds) + reused:<28} {r.seconds:>6.1f}s"
        )
    usable = [r for r in report.results if r.status == "ok"]
    n_slices = sum(len(r.files) for r in usable)
    lines.append(
        f"{len(report.results)} volume(s), {len(usable)} in the data set, {n_slices} slices; "
        f"{computed} value(s) computed, {lab} from the lab; {len(report.reused)} volume(s) reused; "
        f"{report.seconds:.1f} s -> {report.out}"
    )
    return "\n".join(lines)

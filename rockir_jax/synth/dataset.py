"""Synthetic data sets: one volume per sample, measured, sliced, rendered and written in the original layout.

Everything is deterministic from a master seed: a sample's randomness comes from
``np.random.SeedSequence(master_seed, spawn_key=(reservoir, sample, attempt))``.
:func:`write_dataset` is ``rockir-synthesize``: it generates every sample and writes the set with
:mod:`rockir_jax.data.writer`, as ``rockir-prepare`` writes volumes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from rockir_jax.data import writer
from rockir_jax.data.layout import SPLITS
from rockir_jax.data.writer import Tile
from rockir_jax.physics import (
    permeability_voxel2,
    porosity,
    quiet_network_tools,
    spanning_pores,
    specific_surface,
    voxel2_to_millidarcy,
)
from rockir_jax.synth.render import render_slices
from rockir_jax.synth.reservoirs import RESERVOIRS, Reservoir
from rockir_jax.synth.volumes import FLOW_AXIS, Rock, make_volume
from rockir_jax.volumes.slicing import even_positions

# Per reservoir, the fractions of its samples in each of SPLITS (train, val, db_test): 5, 1 and 2 of 8
# (more samples keep the ratio).
SPLIT_FRACTIONS = (5 / 8, 1 / 8, 2 / 8)
OVERVIEW = "overview.png"
GENERATION_RECORD = "generation.json"
METADATA_COLUMNS = (
    "Image",
    "Label",
    "GI",
    "NI",
    "Size",
    "Depth",
    "Pixelsize",
    "Created_label",
    "Porosity",
    "Permeability",
    "Reservoir",
    "Generator",
    "Split",
    "Permeability_voxel2",
    "Permeability_m2",
    "Voxelsize",
    "Specific_surface",
    "Spanning_porosity",
)


@dataclass(frozen=True)
class DatasetConfig:
    """Everything that determines a generated data set."""

    seed: int = 20231
    reservoirs: int = 6
    samples_per_reservoir: int = 8
    slices: int = 12
    image_size: int = 128
    volume_size: int = 128
    max_attempts: int = 20
    # Grey-level sigma of the scanner noise added to every rendered slice.
    noise_sigma: float = 5.0
    # Voxels per image pixel, drawn per sample from this range: a slice shows a central crop of
    # ``image_size * voxels_per_pixel`` voxels, so one rock family comes at several pixel sizes.
    # None: the whole slice, ``volume_size / image_size`` voxels per pixel.
    voxels_per_pixel: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.voxels_per_pixel is not None:
            low, high = (float(v) for v in self.voxels_per_pixel)
            if not 0 < low <= high or self.image_size * high > self.volume_size:
                raise ValueError(
                    f"voxels_per_pixel {low:g}..{high:g} must be positive, increasing and at most "
                    f"volume_size / image_size = {self.volume_size / self.image_size:g}"
                )
            object.__setattr__(self, "voxels_per_pixel", (low, high))
        if not self.noise_sigma >= 0:
            raise ValueError(f"noise_sigma must be at least 0, not {self.noise_sigma}")

    def crop_size(self, reservoir_index: int, sample_index: int, attempt: int) -> int:
        """Side in voxels of the slice crop a sample is rendered from (its pixel size's cause)."""
        if self.voxels_per_pixel is None:
            return self.volume_size
        seq = np.random.SeedSequence(self.seed, spawn_key=(reservoir_index, sample_index, attempt, 1))
        voxels_per_pixel = np.random.default_rng(seq).uniform(*self.voxels_per_pixel)
        return min(self.volume_size, round(self.image_size * voxels_per_pixel))


@dataclass(frozen=True)
class SampleResult:
    """One generated sample: its slices, its CSV row and the record of how it was made."""

    name: str
    split: str
    images: tuple[np.ndarray, ...]
    row: dict[str, Any]
    record: dict[str, Any]


# --- naming and splits --------------------------------------------------------------------------


def sample_name(reservoir_code: str, sample_index: int) -> str:
    """``<reservoir 3 chars><sample 3 chars>``, e.g. ``VORS01`` for the first sample."""
    return f"{reservoir_code}S{sample_index + 1:02d}"


def split_of(sample_index: int, samples_per_reservoir: int) -> str:
    """Split of a sample within its reservoir: first 5/8 train, next 1/8 val, the rest db_test."""
    n_train = round(SPLIT_FRACTIONS[0] * samples_per_reservoir)
    n_val = max(1, round(SPLIT_FRACTIONS[1] * samples_per_reservoir))
    return SPLITS[(sample_index >= n_train) + (sample_index >= n_train + n_val)]


# --- seeds and parameters -----------------------------------------------------------------------


def sample_seed_sequence(
    master_seed: int, reservoir_index: int, sample_index: int, attempt: int
) -> np.random.SeedSequence:
    """The root of all randomness for one attempt at one sample."""
    return np.random.SeedSequence(master_seed, spawn_key=(reservoir_index, sample_index, attempt))


def draw_params(reservoir: Reservoir, rng: np.random.Generator) -> dict[str, float | int]:
    """Uniform draws from a reservoir's ranges, in a fixed (sorted) order for reproducibility."""
    params: dict[str, float | int] = {}
    for key in sorted(reservoir.params):
        low, high = reservoir.params[key]
        value = float(rng.uniform(low, high))
        params[key] = round(value) if key in reservoir.integer_params else round(value, 4)
    return params


# --- one sample -----------------------------------------------------------------------------------


def _draw_volume(
    config: DatasetConfig, reservoir_index: int, sample_index: int, attempt: int
) -> tuple[dict[str, float | int], Rock, np.random.SeedSequence]:
    """One attempt's parameters, volume and the seed of its rendering."""
    reservoir = RESERVOIRS[reservoir_index]
    seq = sample_seed_sequence(config.seed, reservoir_index, sample_index, attempt)
    param_seq, volume_seq, render_seq = seq.spawn(3)
    params = draw_params(reservoir, np.random.default_rng(param_seq))
    shape = (config.volume_size,) * 3
    rock = make_volume(reservoir.generator, shape, params, np.random.default_rng(volume_seq))
    return params, rock, render_seq


def regenerate_volume(config: DatasetConfig, record: Mapping[str, Any]) -> Rock:
    """The volume of a generated sample, rebuilt from its generation record (``generation.json``'s
    ``samples``) without measuring or rendering it again."""
    return _draw_volume(config, record["reservoir_index"], record["sample_index"], record["attempt"])[1]


def generate_sample(config: DatasetConfig, reservoir_index: int, sample_index: int) -> SampleResult:
    """Generate, measure and render one sample, redrawing volumes that do not percolate."""
    for attempt in range(config.max_attempts):
        params, rock, render_seq = _draw_volume(config, reservoir_index, sample_index, attempt)
        k_voxel2 = permeability_voxel2(rock.pore)
        if k_voxel2 > 0:
            return _sample_result(
                config, reservoir_index, sample_index, attempt, params, rock, render_seq, k_voxel2
            )
    name = sample_name(RESERVOIRS[reservoir_index].code, sample_index)
    raise RuntimeError(f"{name}: no percolating volume in {config.max_attempts} attempts")


def regenerate_sample(
    config: DatasetConfig, record: Mapping[str, Any], k_voxel2: float | None = None
) -> SampleResult:
    """A generated sample rebuilt from its generation record (``generation.json``'s ``samples``): its
    volume, slices and CSV row. The flow is solved again unless its permeability ``k_voxel2`` (voxel²)
    is given; the solve is most of the time."""
    reservoir_index, sample_index, attempt = (
        record["reservoir_index"],
        record["sample_index"],
        record["attempt"],
    )
    params, rock, render_seq = _draw_volume(config, reservoir_index, sample_index, attempt)
    if k_voxel2 is None:
        k_voxel2 = permeability_voxel2(rock.pore)
    return _sample_result(config, reservoir_index, sample_index, attempt, params, rock, render_seq, k_voxel2)


def _sample_result(
    config: DatasetConfig,
    reservoir_index: int,
    sample_index: int,
    attempt: int,
    params: dict[str, float | int],
    rock: Rock,
    render_seq: np.random.SeedSequence,
    k_voxel2: float,
) -> SampleResult:
    """Renders and measures a drawn volume of permeability ``k_voxel2``."""
    reservoir = RESERVOIRS[reservoir_index]
    shape = (config.volume_size,) * 3
    positions = even_positions(shape[FLOW_AXIS], config.slices)
    crop = config.crop_size(reservoir_index, sample_index, attempt)
    images = render_slices(
        rock, positions, reservoir.minerals, render_seq, config.image_size, crop, config.noise_sigma
    )
    pore = rock.pore
    name = sample_name(reservoir.code, sample_index)
    split = split_of(sample_index, config.samples_per_reservoir)
    pixel_size_um = reservoir.voxel_size_um * crop / config.image_size
    row = {
        "Image": name,
        "Label": reservoir.code,
        "GI": reservoir_index + 1,
        "NI": sample_index + 1,
        "Size": config.image_size,
        "Depth": config.volume_size,
        "Pixelsize": pixel_size_um,
        "Created_label": name,
        "Porosity": porosity(pore),
        "Permeability": voxel2_to_millidarcy(k_voxel2, reservoir.voxel_size_um),
        "Reservoir": reservoir.code,
        "Generator": reservoir.generator,
        "Split": split,
        "Permeability_voxel2": k_voxel2,
        "Permeability_m2": k_voxel2 * (reservoir.voxel_size_um * 1e-6) ** 2,
        "Voxelsize": reservoir.voxel_size_um,
        "Specific_surface": specific_surface(pore) / (reservoir.voxel_size_um * 1e-6),
        "Spanning_porosity": porosity(spanning_pores(pore)),
    }
    record = {
        "sample": name,
        "reservoir": reservoir.code,
        "reservoir_index": reservoir_index,
        "sample_index": sample_index,
        "split": split,
        "generator": reservoir.generator,
        "attempt": attempt,
        "spawn_key": [reservoir_index, sample_index, attempt],
        "params": params,
        "volume_shape": list(shape),
        "flow_axis": FLOW_AXIS,
        "slice_positions": positions,
        "voxel_size_um": reservoir.voxel_size_um,
    }
    if config.voxels_per_pixel is not None:
        record["crop_voxels"] = crop
    return SampleResult(name=name, split=split, images=images, row=row, record=record)


# --- the data set -------------------------------------------------------------------------------


def sample_jobs(config: DatasetConfig) -> list[tuple[int, int]]:
    """(reservoir, sample) index pairs of a data set, in file order."""
    if not 1 <= config.reservoirs <= len(RESERVOIRS):
        raise ValueError(f"reservoirs must be in 1..{len(RESERVOIRS)}, got {config.reservoirs}")
    return [(r, s) for r in range(config.reservoirs) for s in range(config.samples_per_reservoir)]


# one thread per process: the pool already uses every core
SINGLE_THREAD_ENV = {
    var: "1" for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")
}


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _generate_job(args: tuple[DatasetConfig, int, int]) -> SampleResult:
    config, reservoir_index, sample_index = args
    quiet_network_tools()
    return generate_sample(config, reservoir_index, sample_index)


def generate_samples(config: DatasetConfig, workers: int = 2) -> Iterator[SampleResult]:
    """Yield every sample as it finishes (order varies; each result is deterministic)."""
    jobs = [(config, r, s) for r, s in sample_jobs(config)]
    if workers <= 1:
        yield from map(_generate_job, jobs)
        return
    # spawn, not fork: numba and MKL thread pools do not survive a fork of a threaded parent.
    # Spawned workers read the thread limits from the environment when they import numpy.
    context = multiprocessing.get_context("spawn")
    with _environment(SINGLE_THREAD_ENV), context.Pool(workers) as pool:
        yield from pool.imap_unordered(_generate_job, jobs)
        # Let the workers exit on their own: the pool's exit terminates them, and a worker killed
        # while holding a semaphore leaves the resource tracker warning about it.
        pool.close()
        pool.join()


def _metadata(results: Sequence[SampleResult]) -> pd.DataFrame:
    """The metadata CSV: a row per sample, sorted by name, in :data:`METADATA_COLUMNS`' order."""
    return writer.metadata_frame([r.row for r in results], METADATA_COLUMNS)


def generation_record(config: DatasetConfig, results: Sequence[SampleResult], command: str) -> dict[str, Any]:
    """``generation.json``: the config, the command and every sample's parameters and seed key."""
    return {
        "config": config.__dict__,
        "command": command,
        "seed_scheme": "np.random.SeedSequence(seed, spawn_key=(reservoir, sample, attempt))",
        "reservoirs": [
            {
                "code": r.code,
                "generator": r.generator,
                "description": r.description,
                "voxel_size_um": r.voxel_size_um,
                "params": {k: list(v) for k, v in r.params.items()},
                "minerals": dict(r.minerals),
            }
            for r in RESERVOIRS[: config.reservoirs]
        ],
        "samples": [r.record for r in sorted(results, key=lambda r: r.name)],
    }


def sheet_rows(results: Sequence[SampleResult], columns: int = 6) -> list[list[Tile]]:
    """The overview's rows, a row a reservoir: the middle slice of its first ``columns`` samples, each
    captioned with its name, porosity and permeability."""
    ordered = sorted(results, key=lambda r: (r.row["GI"], r.row["NI"]))
    by_reservoir: dict[str, list[SampleResult]] = {}
    for result in ordered:
        by_reservoir.setdefault(result.row["Reservoir"], []).append(result)
    return [
        [
            (
                result.images[len(result.images) // 2],
                f"{result.name} {result.row['Porosity']:.2f} {result.row['Permeability']:.3g}mD",
            )
            for result in samples[:columns]
        ]
        for samples in by_reservoir.values()
    ]


COLUMN_DOCS = {
    "Image": "sample name (the original matched it against file stems)",
    "Label": "reservoir code",
    "GI": "reservoir number (1-based)",
    "NI": "sample number within its reservoir (1-based)",
    "Size": "slice image side in pixels",
    "Depth": "volume extent along the flow axis (slices are cut normal to it), voxels",
    "Pixelsize": "image pixel size in µm (voxel size * slice crop / image size; the crop is the volume "
    "size unless the set was made with --voxels-per-pixel)",
    "Created_label": "sample name = folder name, `<reservoir 3 chars><sample 3 chars>`",
    "Porosity": "pore voxel fraction of the whole volume",
    "Permeability": "absolute permeability along the flow axis in mD (1 mD = 9.869233e-16 m²)",
    "Reservoir": "reservoir code (same as Label)",
    "Generator": "volume generator family",
    "Split": "train, val or db_test",
    "Permeability_voxel2": "permeability in voxel² (= Permeability_m2 / (Voxelsize·1e-6)²)",
    "Permeability_m2": "permeability in m²",
    "Voxelsize": "voxel edge of the 3-D volume in µm",
    "Specific_surface": "pore-solid interface area per bulk volume in 1/m (voxel-face count)",
    "Spanning_porosity": "pore fraction in clusters face-connected from inlet to outlet",
}


def write_readme(
    out: Path,
    config: DatasetConfig,
    results: Sequence[SampleResult],
    command: str,
    wall_s: float,
    workers: int,
) -> Path:
    """``README.md``: how the set was made, per-reservoir ranges, split counts and column units."""
    frame = _metadata(results)
    lines = [
        "# Synthetic digital rocks",
        "",
        "Generated by `rockir-synthesize` (`rockir_jax.synth`, extra `synth`):",
        "",
        f"    {command}",
        "",
        f"Seed {config.seed}; {len(results)} samples x {config.slices} slices of "
        f"{config.image_size}² px from {config.volume_size}³ volumes; generation took "
        f"{wall_s / 60:.1f} min with {workers} worker processes. `generation.json` holds every "
        "sample's parameters, seed key and slice positions; rerunning the command gives "
        "identical PNGs and `metadata.csv`.",
        "",
        "Each reservoir is one generator family; each sample one volume (True = pore). Porosity is "
        "the pore voxel fraction; permeability comes from a snow2 pore network and an OpenPNM "
        "Stokes flow along the volume's first axis on the inlet-outlet spanning cluster "
        "(non-percolating draws are redrawn). Slices are cut normal to the flow axis at evenly "
        "spaced positions and rendered as micro-CT-like 8-bit images (resin-filled pores dark, "
        "grain-wise mineral greys, texture, shading, PSF blur, noise).",
        "",
        f"Noise sigma {config.noise_sigma:g} grey levels; "
        + (
            "each slice is the whole volume section."
            if config.voxels_per_pixel is None
            else "each sample's slices show a central crop of {:g} to {:g} voxels per pixel, drawn per "
            "sample (`generation.json`'s `crop_voxels`), so its pixel size varies.".format(
                *config.voxels_per_pixel
            )
        ),
        "",
        "Targets as in the original: `log10(Permeability / Pixelsize**2) / 5` with Permeability in "
        "mD and Pixelsize in µm, i.e. `Permeability / Pixelsize**2` is in mD/µm² "
        "(= 1013.25 x permeability in pixel²).",
        "",
        "![overview](overview.png)",
        "",
        "| Reservoir | Generator | Rock | Voxel µm | Porosity | Permeability mD | train / val / db_test |",
        "|---|---|---|---|---|---|---|",
    ]
    for reservoir in RESERVOIRS[: config.reservoirs]:
        rows = frame[frame["Reservoir"] == reservoir.code]
        counts = [int((rows["Split"] == split).sum()) for split in SPLITS]
        lines.append(
            f"| {reservoir.code} | `{reservoir.generator}` | {reservoir.description} | "
            f"{reservoir.voxel_size_um:g} | "
            f"{rows['Porosity'].min():.3f}-{rows['Porosity'].max():.3f} | "
            f"{rows['Permeability'].min():.3g}-{rows['Permeability'].max():.3g} | "
            f"{' / '.join(map(str, counts))} |"
        )
    lines += [
        "",
        "Splits are by sample (no sample in two splits): per reservoir the first 5/8 of the "
        "samples train, the next 1/8 val, the rest db_test. Layout: "
        "`train/<sample>/<sample>_sliceN.png`, "
        "`val/<sample>/…`, flat `db_test/<sample>_sliceN.png`.",
        "",
        "## metadata.csv columns",
        "",
        *[f"- `{name}`: {doc}" for name, doc in COLUMN_DOCS.items()],
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


@dataclass(frozen=True)
class SynthesisReport:
    """What :func:`write_dataset` wrote: the samples (sorted by name) and the generation's wall time."""

    out: Path
    results: list[SampleResult]
    seconds: float


def write_dataset(
    out: Path,
    config: DatasetConfig,
    command: str,
    workers: int = 2,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthesisReport:
    """Generates the data set of ``config`` into ``out``: the slices in the layout, ``metadata.csv``,
    ``generation.json`` (``command`` is recorded there and in ``README.md``) and ``overview.png``.

    ``workers`` processes generate the samples (the files do not depend on it); ``progress`` shows a
    bar. An existing ``out`` is a ValueError unless ``overwrite``, which replaces it.
    """
    if out.exists():
        if not overwrite:
            raise ValueError(f"{out} exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    results = []
    jobs = generate_samples(config, workers=workers)
    for result in tqdm(jobs, total=len(sample_jobs(config)), unit="sample", disable=not progress):
        writer.write_sample(out, result.split, result.name, result.images)
        results.append(result)
    seconds = time.perf_counter() - start
    writer.write_metadata(out, _metadata(results))
    writer.write_record(out / GENERATION_RECORD, generation_record(config, results, command))
    writer.contact_sheet(sheet_rows(results), out / OVERVIEW, tile=config.image_size, label=12)
    write_readme(out, config, results, command, seconds, workers)
    return SynthesisReport(out, sorted(results, key=lambda r: r.name), seconds)

"""Retrieval evaluation of a model on a folder of images: every image queries all the others.

Pipeline (``scripts/evaluate_retrieval.py`` is a thin command line around :func:`evaluate`)::

    model = load_workdir("runs/default")            # or load_trained(...), load_vanilla(...)
    table = list_images(db, metadata_csv)           # paths, sample, reservoir, known metadata
    index = build_index(model, table)               # embeddings + predictions, sharded over devices
    metrics = evaluate_index(index, k=10)           # per relevance level, and metadata errors

Database layouts:

* flat: a folder of images named as in the original (``E002M0_slice1.png``: sample ``E002M0``,
  reservoir ``E00``; see :func:`rockir_jax.data.metadata.sample_from_filename`);
* split: a root holding ``train/<sample>/``, ``val/<sample>/`` and flat ``db_test/``; ``split``
  picks one of them (default ``db_test``, the held-out images) or ``"all"``.

A metadata CSV is optional. Samples found in it get their true porosity and permeability and pixel
size (predicted permeabilities are then multiplied back by ``Pixelsize**2``) and, when the CSV has a
``Reservoir`` column, their reservoir; other images keep the naming rule and unknown (NaN) metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pandas as pd

from rockir_jax import porting
from rockir_jax.checkpoint import restore_variables
from rockir_jax.data.metadata import (
    IMAGE_SUFFIXES,
    RESERVOIR_COLUMN,
    SPLITS,
    DataValidationError,
    SplitTable,
    TargetSpec,
    check_image,
    compute_targets,
    read_image,
    read_metadata,
    reservoir_from_sample,
    sample_from_filename,
    targets_to_physical,
)
from rockir_jax.data.sources import from_table
from rockir_jax.models import build_model
from rockir_jax.retrieval.embed import embed_source, validation_metrics
from rockir_jax.retrieval.figures import query_from_index, retrieval_figure
from rockir_jax.retrieval.index import RetrievalIndex, save_index
from rockir_jax.retrieval.knn import knn
from rockir_jax.retrieval.metrics import metadata_metrics
from rockir_jax.step import make_embed_step, make_mesh

DEFAULT_SPLIT = "db_test"
DEFAULT_TARGETS = TargetSpec()
FIGURE_IMAGE_SIZE = 224
"""Tiles of the figures are shown at the paper's input size, whatever size the model embeds."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to embed: module, variables, input size and an identity.

    ``identity`` is stored in every index the model builds; a saved index is only searched with
    queries embedded by a model of the same identity.
    """

    module: nn.Module
    variables: Mapping[str, Any]
    image_size: int
    identity: dict[str, Any]
    target_spec: TargetSpec = DEFAULT_TARGETS


# ------------------------------------------------------------------------------------------------
# Models


def load_config(path: str | Path) -> ml_collections.ConfigDict:
    """A config from a ``configs/*.py`` file (its ``get_config()``) or a run's ``config.json``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    if path.suffix == ".json":
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    if (path.parent / "__init__.py").is_file():
        # Config files import their siblings as a package (``from configs import default``).
        sys.path.insert(0, str(path.parent.parent.absolute()))
    spec = importlib.util.spec_from_file_location(f"_rockir_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def load_trained(
    checkpoint_dir: str | Path, config: ml_collections.ConfigDict, step: int | None = None
) -> LoadedModel:
    """The DSNN or Siamese model of ``config`` with variables from ``checkpoint_dir`` (default: its
    best checkpoint, else its latest)."""
    checkpoint_dir = Path(checkpoint_dir).absolute()
    variables, step = restore_variables(checkpoint_dir, step)
    extra = tuple(config.data.extra_targets)
    module = build_model(
        config.model,
        config.backbone,
        num_extra_targets=len(extra),
        dtype=jnp.dtype(config.dtype),
        conv_algorithm=config.get("conv_algorithm", "auto"),  # runs saved before the option had none
    )
    identity = {
        "model": config.model,
        "backbone": config.backbone,
        "image_size": config.image_size,
        "checkpoint": str(checkpoint_dir),
        "step": int(step),
    }
    # Host copies: the embed step places them on its own mesh, whatever devices trained them.
    variables = jax.tree.map(np.asarray, variables)
    return LoadedModel(module, variables, config.image_size, identity, TargetSpec(extra=extra))


def load_workdir(workdir: str | Path, step: int | None = None) -> LoadedModel:
    """The model of a training run: ``<workdir>/config.json`` and ``<workdir>/checkpoints``."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        raise FileNotFoundError(f"{workdir}: no such run directory")
    return load_trained(workdir / "checkpoints", load_config(workdir / "config.json"), step)


def load_vanilla(
    backbone: str = "resnet34", image_size: int = 224, pretrained: str | Path | None = None, seed: int = 0
) -> LoadedModel:
    """The vanilla baseline: pooled, normalised features of a ported ImageNet backbone
    (:func:`rockir_jax.porting.load_variables`), or of a randomly initialised one without ``pretrained``."""
    module = build_model("vanilla", backbone)
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    if pretrained:
        pretrained = Path(pretrained).absolute()
        # Every variable comes from the weights: only the shapes of an initialisation are needed.
        shapes = jax.eval_shape(module.init, jax.random.key(seed), images)
        variables = porting.with_pretrained_backbones(
            shapes, porting.load_variables(pretrained), source=str(pretrained)
        )
    else:
        variables = jax.tree.map(np.asarray, jax.jit(module.init)(jax.random.key(seed), images))
    identity = {
        "model": "vanilla",
        "backbone": backbone,
        "image_size": image_size,
        "pretrained": str(pretrained) if pretrained else None,
        "seed": None if pretrained else seed,
    }
    return LoadedModel(module, variables, image_size, identity)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a model, shared by the evaluation and search commands."""
    group = parser.add_argument_group("model (one of --workdir, --checkpoint + --config, --model vanilla)")
    group.add_argument("--workdir", type=Path, help="a training run (config.json + checkpoints/)")
    group.add_argument("--checkpoint", type=Path, help="a checkpoints/ directory of a run")
    group.add_argument("--config", type=Path, help="config file of --checkpoint (configs/*.py or .json)")
    group.add_argument("--step", type=int, help="checkpoint step (default: the best, else the latest)")
    group.add_argument("--model", choices=("vanilla",), help="the untrained baseline instead of a run")
    group.add_argument("--backbone", default="resnet34", help="backbone of --model vanilla")
    group.add_argument("--pretrained", type=Path, help="ported ImageNet weights of --model vanilla")
    group.add_argument("--image-size", type=int, default=224, help="input size of --model vanilla")


def model_from_arguments(args: argparse.Namespace) -> LoadedModel:
    """The model chosen by :func:`add_model_arguments`' options."""
    chosen = [args.workdir is not None, args.checkpoint is not None, args.model is not None]
    if sum(chosen) != 1:
        raise ValueError(
            "choose exactly one model: --workdir, --checkpoint with --config, or --model vanilla"
        )
    if args.workdir is not None:
        return load_workdir(args.workdir, args.step)
    if args.checkpoint is not None:
        if args.config is None:
            raise ValueError("--checkpoint needs --config (the run's config.json or its configs/*.py)")
        return load_trained(args.checkpoint, load_config(args.config), args.step)
    return load_vanilla(args.backbone, args.image_size, args.pretrained)


# ------------------------------------------------------------------------------------------------
# Images


def _image_files(directory: Path) -> list[Path]:
    # Other files (a metadata CSV, a README) may sit beside the images.
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _scan(db: Path, split: str) -> list[tuple[Path, str]]:
    """(image, sample) of a flat folder or of one (or all) splits of the split layout."""
    present = [s for s in SPLITS if (db / s).is_dir()]
    if not present:
        return [(p, sample_from_filename(p.name)) for p in _image_files(db)]
    if split not in (*present, "all"):
        raise FileNotFoundError(f"{db / split}: no such split (found {', '.join(present)}; or use 'all')")
    found = []
    for name in present if split == "all" else [split]:
        if name == "db_test":
            found += [(p, sample_from_filename(p.name)) for p in _image_files(db / name)]
        else:
            folders = sorted(d for d in (db / name).iterdir() if d.is_dir() and not d.name.startswith("."))
            found += [(p, d.name) for d in folders for p in _image_files(d)]
    return found


def image_table(
    files: Sequence[tuple[str | Path, str]],
    metadata: pd.DataFrame | None = None,
    target_spec: TargetSpec = DEFAULT_TARGETS,
) -> SplitTable:
    """A :class:`SplitTable` of ``(path, sample)`` pairs, metadata from ``metadata`` (a frame of
    :func:`rockir_jax.data.metadata.read_metadata`) where the sample is in it, NaN elsewhere."""
    samples = np.array([s for _, s in files], dtype=str)
    known = np.array([metadata is not None and s in metadata.index for s in samples], dtype=bool)
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
        if RESERVOIR_COLUMN in rows.columns:
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
    files = _scan(db, split)
    if not files:
        raise DataValidationError([f"{db}: no images ({', '.join(IMAGE_SUFFIXES)}) in it"])
    problems = [p for p in map(check_image, (path for path, _ in files)) if p is not None]
    if problems:
        raise DataValidationError(problems)
    metadata = read_metadata(metadata_csv, target_spec) if metadata_csv is not None else None
    return image_table(files, metadata, target_spec)


# ------------------------------------------------------------------------------------------------
# Embedding and the index


def embed_table(
    model: LoadedModel, table: SplitTable, batch_size: int = 64, progress: str | None = "embed"
) -> dict[str, np.ndarray]:
    """``embedding`` (N, D) and, for the DSNN, ``reg`` (N, T) of every image of ``table``, sharded
    over all devices (``batch_size`` is rounded up to a multiple of the device count)."""
    mesh = make_mesh()
    devices = mesh.devices.size
    batch_size = -(-batch_size // devices) * devices
    source = from_table(table, model.image_size)
    step = make_embed_step(mesh, model.module)
    return embed_source(step, model.variables, source, mesh, batch_size, progress=progress)


def build_index(model: LoadedModel, table: SplitTable, batch_size: int = 64) -> RetrievalIndex:
    """Embeds ``table`` and returns its :class:`RetrievalIndex`, predictions in physical units where
    the pixel size is known (NaN elsewhere; the raw ``predicted_targets`` are always kept)."""
    embedded = embed_table(model, table, batch_size)
    true_porosity, true_permeability = targets_to_physical(table.targets, table.pixel_size, model.target_spec)
    predictions: dict[str, np.ndarray] = {}
    if "reg" in embedded:
        reg = embedded["reg"]
        porosity, permeability = targets_to_physical(reg, table.pixel_size, model.target_spec)
        predictions = {
            "predicted_targets": reg[:, :2],
            "predicted_porosity": porosity,
            "predicted_permeability": permeability,
        }
    return RetrievalIndex(
        embeddings=embedded["embedding"],
        paths=np.array(table.paths),
        samples=table.samples,
        reservoirs=table.reservoirs,
        model=model.identity,
        true_porosity=true_porosity,
        true_permeability=true_permeability,
        **predictions,
    )


# ------------------------------------------------------------------------------------------------
# Metrics, report, figures


def evaluate_index(index: RetrievalIndex, k: int = 10) -> dict[str, float]:
    """Every image against all others (itself excluded), flat ``{"sample/map@10": …}`` as in
    training's validation; plus ``metadata/…`` errors over the images with known metadata."""
    labels = {"embedding": index.embeddings, "sample_id": index.samples, "reservoir_id": index.reservoirs}
    metrics = validation_metrics(labels, labels, query_offset=0, k=k)
    known = np.isfinite(index.true_porosity) if index.true_porosity is not None else np.zeros(0, bool)
    if index.predicted_porosity is not None and known.any():
        errors = metadata_metrics(
            index.true_porosity[known],
            index.predicted_porosity[known],
            index.true_permeability[known],
            index.predicted_permeability[known],
        )
        metrics |= {f"metadata/{name}": float(v) for name, v in errors.items() if not name.startswith("n_")}
    return metrics


def summary(index: RetrievalIndex, k: int) -> dict[str, Any]:
    """What was evaluated: counts of images, samples, reservoirs and images with metadata."""
    known = 0 if index.true_porosity is None else int(np.isfinite(index.true_porosity).sum())
    return {
        "model": index.model,
        "k": k,
        "n_images": len(index),
        "n_samples": len(np.unique(index.samples)),
        "n_reservoirs": len(np.unique(index.reservoirs)),
        "n_images_with_metadata": known,
    }


_NAMES = {
    "map@{k}": r"mAP@{k} (AP / min(\|R\|, k))",
    "map": "mAP (full ranking)",
    "precision@{k}": "precision@{k}",
    "recall@{k}": r"recall@{k} (fraction of \|R\| in top {k})",
    "hit_rate@{k}": "hit rate@{k} (≥ 1 relevant in top {k}; DESIGN's recall@k)",
    "map@{k}_original": "AP@{k}, original RockIR (divides by k)",
}
_METADATA_NAMES = {
    "porosity_mae": "porosity MAE",
    "log10_permeability_rmse": "log10-permeability RMSE",
    "log10_permeability_r2": "log10-permeability R²",
}


def metrics_markdown(report: Mapping[str, Any]) -> str:
    """The report of :func:`evaluate` as Markdown: a table per relevance level, then metadata."""
    k, metrics = report["k"], report["metrics"]
    lines = [
        "# Retrieval evaluation",
        "",
        f"- model: `{json.dumps(report['model'])}`",
        f"- database: `{report['db']}` ({report['n_images']} images, {report['n_samples']} samples, "
        f"{report['n_reservoirs']} reservoirs); every image queries all others, itself excluded",
        "",
        "| metric | same sample | same reservoir |",
        "| --- | ---: | ---: |",
    ]
    for key, label in _NAMES.items():
        key, label = key.format(k=k), label.format(k=k)
        lines.append(f"| {label} | {metrics[f'sample/{key}']:.4f} | {metrics[f'reservoir/{key}']:.4f} |")
    lines.append("")
    if any(key.startswith("metadata/") for key in metrics):
        lines += [f"Metadata, over {report['n_images_with_metadata']} images with known values:", ""]
        lines += [f"- {label}: {metrics[f'metadata/{key}']:.4f}" for key, label in _METADATA_NAMES.items()]
    elif report["model"]["model"] != "dsnn":
        lines.append("Metadata: this model predicts none.")
    else:
        lines.append("Metadata: no image's sample is in a metadata CSV.")
    return "\n".join(lines) + "\n"


def figure_rows(index: RetrievalIndex, n: int) -> np.ndarray:
    """Up to ``n`` query rows for figures: the first image of samples spread evenly over the index."""
    firsts = np.sort(np.unique(index.samples, return_index=True)[1])
    return np.unique(firsts[np.linspace(0, len(firsts) - 1, min(n, len(firsts))).round().astype(int)])


def write_figures(
    index: RetrievalIndex, rows: Sequence[int], out: str | Path, perm_unit: str = ""
) -> list[Path]:
    """``<out>/retrieval_<query stem>.png`` for each database row in ``rows`` (see
    :func:`rockir_jax.retrieval.retrieval_figure`)."""
    rows = np.asarray(rows, np.int32)
    if len(rows) == 0:
        return []
    _, rankings = knn(index.embeddings[rows], index.embeddings, len(index) - 1, exclude_indices=rows)
    load = lambda row: read_image(index.paths[row], FIGURE_IMAGE_SIZE)
    paths = []
    for row, ranking in zip(rows, rankings, strict=True):
        query = query_from_index(index, int(row), load, perm_unit=perm_unit)
        target = Path(out) / f"retrieval_{Path(index.paths[row]).stem}.png"
        paths.append(retrieval_figure(target, query, ranking, index, load, perm_unit=perm_unit))
    return paths


def json_text(report: Any) -> str:
    """``report`` as indented JSON, undefined numbers (e.g. R² of constant targets) as ``null``.

    ``json.dumps`` would write them as ``NaN``, which is not JSON and breaks strict readers.
    """

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return value

    return json.dumps(finite(report), indent=2, allow_nan=False) + "\n"


def evaluate(
    model: LoadedModel,
    db: str | Path,
    out: str | Path,
    *,
    metadata_csv: str | Path | None = None,
    split: str = DEFAULT_SPLIT,
    k: int = 10,
    figures: int = 3,
    batch_size: int = 64,
    perm_unit: str = "",
) -> dict[str, Any]:
    """Embeds the database ``db``, writes ``<out>/index/``, ``metrics.json``, ``metrics.md`` and
    ``figures`` retrieval figures, and returns the report written to ``metrics.json``."""
    out = Path(out)
    table = list_images(db, metadata_csv, split, model.target_spec)
    index = build_index(model, table, batch_size)
    out.mkdir(parents=True, exist_ok=True)
    save_index(out / "index", index)
    report = {"db": str(Path(db).absolute()), "split": split} | summary(index, k)
    report["metrics"] = evaluate_index(index, k)
    (out / "metrics.json").write_text(json_text(report))
    (out / "metrics.md").write_text(metrics_markdown(report))
    write_figures(index, figure_rows(index, figures), out, perm_unit)
    return report

"""Retrieval evaluation of a model on a folder of images: every image queries all the others.

Pipeline::

    model = load_model(workdir="runs/default")      # rockir_jax.retrieval.loading
    table = list_images(db, metadata_csv)           # rockir_jax.data.database
    index = build_index(model, table)               # embeddings + predictions, sharded over devices
    metrics = evaluate_index(index, k=10)           # per relevance level, and metadata errors

:func:`evaluate` runs all of it and writes the report (:mod:`rockir_jax.retrieval.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from rockir_jax import sharding
from rockir_jax.data.database import DEFAULT_SPLIT, DEFAULT_TARGETS, list_images, training_samples
from rockir_jax.data.metadata import SplitTable, TargetSpec, targets_to_physical
from rockir_jax.data.sources import from_table
from rockir_jax.jsonio import json_text
from rockir_jax.retrieval.embed import embed_source, make_embed_step, validation_metrics
from rockir_jax.retrieval.index import RetrievalIndex, save_index
from rockir_jax.retrieval.loading import LoadedModel
from rockir_jax.retrieval.metrics import (
    LEVELS,
    PER_SAMPLE,
    PREFIX_LEVEL,
    flat_metrics,
    metadata_metrics,
    per_sample_metadata_metrics,
    prefix_labels,
)
from rockir_jax.retrieval.report import figure_rows, metrics_markdown, write_figures

EVALUATION_LEVELS = (*LEVELS, PREFIX_LEVEL)
"""Relevance levels of an evaluation: sample, reservoir and the original script's 2-character prefix."""


def embed_table(
    model: LoadedModel, table: SplitTable, batch_size: int = 64, progress: str | None = "embed"
) -> dict[str, np.ndarray]:
    """``embedding`` (N, D) and, for the DSNN, ``reg`` (N, T) of every image of ``table`` (each averaged
    over the model's test-time orientations), sharded over all devices (``batch_size`` is rounded up
    to a multiple of the device count)."""
    mesh = sharding.make_mesh()
    devices = mesh.devices.size
    batch_size = -(-batch_size // devices) * devices
    source = from_table(table, model.image_size)
    step = make_embed_step(mesh, model.module, model.orientations)
    return embed_source(step, model.variables, source, mesh, batch_size, progress=progress)


def build_index(model: LoadedModel, table: SplitTable, batch_size: int = 64) -> RetrievalIndex:
    """Embeds ``table`` and returns its :class:`RetrievalIndex` (:func:`table_index`)."""
    embedded = embed_table(model, table, batch_size)
    return table_index(table, embedded["embedding"], model.identity, embedded.get("reg"), model.target_spec)


def table_index(
    table: SplitTable,
    embeddings: np.ndarray,
    identity: dict[str, Any],
    predicted_targets: np.ndarray | None = None,
    target_spec: TargetSpec = DEFAULT_TARGETS,
) -> RetrievalIndex:
    """The :class:`RetrievalIndex` of ``table``'s images with their ``embeddings`` and, when a model
    predicts, its raw ``predicted_targets`` (N, T), also in physical units where the pixel size is
    known (NaN elsewhere)."""
    true_porosity, true_permeability = targets_to_physical(table.targets, table.pixel_size, target_spec)
    predictions: dict[str, np.ndarray] = {}
    if predicted_targets is not None:
        porosity, permeability = targets_to_physical(predicted_targets, table.pixel_size, target_spec)
        predictions = {
            "predicted_targets": predicted_targets[:, :2],
            "predicted_porosity": porosity,
            "predicted_permeability": permeability,
        }
    return RetrievalIndex(
        embeddings=embeddings,
        paths=np.array(table.paths),
        samples=table.samples,
        reservoirs=table.reservoirs,
        model=identity,
        true_porosity=true_porosity,
        true_permeability=true_permeability,
        **predictions,
    )


def usable_k(n_images: int, k: int) -> int:
    """``k`` capped at the ranking length ``n_images - 1`` (each image queries all others)."""
    if n_images < 2:
        raise ValueError(f"a database of {n_images} image(s) has nothing to retrieve; it needs at least 2")
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    return min(k, n_images - 1)


def evaluate_index(index: RetrievalIndex, k: int = 10) -> dict[str, float]:
    """Every image against all others (itself excluded), flat ``{"sample/map@10": …}`` as in
    training's validation, at the levels sample, reservoir and :data:`PREFIX_LEVEL` (the original
    script's: the file stem's first 2 characters); plus ``metadata/…`` errors over the images with known
    metadata. ``k`` must be at most the ranking length (:func:`usable_k`)."""
    labels = {
        "embedding": index.embeddings,
        "sample_id": index.samples,
        "reservoir_id": index.reservoirs,
        f"{PREFIX_LEVEL}_id": prefix_labels(index.paths),
    }
    metrics = validation_metrics(labels, labels, query_offset=0, k=k, levels=EVALUATION_LEVELS)
    known = np.isfinite(index.true_porosity) if index.true_porosity is not None else np.zeros(0, bool)
    if index.predicted_porosity is not None and known.any():
        errors = metadata_metrics(
            index.true_porosity[known],
            index.predicted_porosity[known],
            index.true_permeability[known],
            index.predicted_permeability[known],
        )
        metrics |= flat_metrics("metadata", errors)
        errors = per_sample_metadata_metrics(
            index.samples[known],
            index.true_porosity[known],
            index.predicted_porosity[known],
            index.true_permeability[known],
            index.predicted_permeability[known],
        )
        metrics |= flat_metrics(f"metadata{PER_SAMPLE}", errors)
    return metrics


def summary(index: RetrievalIndex, k: int) -> dict[str, Any]:
    """What was evaluated: counts of images, samples, reservoirs and images with metadata; ``k`` as
    asked and as used (:func:`usable_k`)."""
    known = 0 if index.true_porosity is None else int(np.isfinite(index.true_porosity).sum())
    return {
        "model": index.model,
        "k": usable_k(len(index), k),
        "k_requested": k,
        "levels": list(EVALUATION_LEVELS),
        "n_images": len(index),
        "n_samples": len(np.unique(index.samples)),
        "n_reservoirs": len(np.unique(index.reservoirs)),
        "n_images_with_metadata": known,
    }


def seen_in_training(index: RetrievalIndex, train: set[str] | None) -> dict[str, Any] | None:
    """Which of ``index``'s samples (and how many of its images) are among the ``train`` samples;
    None when those are unknown."""
    if train is None:
        return None
    seen = np.isin(index.samples, sorted(train))
    return {"samples": sorted(set(index.samples[seen].tolist())), "n_queries": int(seen.sum())}


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
    ``figures`` retrieval figures, and returns the report written to ``metrics.json``.

    ``k`` is capped at the ranking length (``report["k"]``, the metrics' names use it). When ``db`` is
    a split-layout root with a ``train/`` split, ``report["seen_in_training"]`` names the evaluated
    samples that also have slices there (a slice-level split), else it is None.
    Launched as several processes, all embed their share and return the report; process 0 writes.
    """
    table = list_images(db, metadata_csv, split, model.target_spec)
    usable_k(len(table), k)  # fails before embedding when the database is too small
    index = build_index(model, table, batch_size)
    return report_index(
        index,
        db,
        out,
        metadata_csv=metadata_csv,
        split=split,
        k=k,
        figures=figures,
        perm_unit=perm_unit,
        target_spec=model.target_spec,
    )


def report_index(
    index: RetrievalIndex,
    db: str | Path,
    out: str | Path,
    *,
    metadata_csv: str | Path | None = None,
    split: str = DEFAULT_SPLIT,
    k: int = 10,
    figures: int = 3,
    perm_unit: str = "",
    target_spec: TargetSpec = DEFAULT_TARGETS,
) -> dict[str, Any]:
    """The evaluation of :func:`evaluate` for an index already built from ``db`` (e.g. by
    :mod:`rockir_jax.retrieval.texture`): writes the same files and returns the same report."""
    out = Path(out)
    report = {"db": str(Path(db).absolute()), "split": split} | summary(index, k)
    train = training_samples(db, metadata_csv, target_spec)
    report["seen_in_training"] = seen_in_training(index, train)
    report["metrics"] = evaluate_index(index, report["k"])
    # Every process of a multi-process run holds the same index and metrics; one writes them.
    if jax.process_index() != 0:
        return report
    out.mkdir(parents=True, exist_ok=True)
    save_index(out / "index", index)
    (out / "metrics.json").write_text(json_text(report))
    (out / "metrics.md").write_text(metrics_markdown(report))
    write_figures(index, figure_rows(index, figures), out, perm_unit)
    return report

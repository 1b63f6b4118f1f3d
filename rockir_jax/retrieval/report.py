"""An evaluation's report: ``metrics.md`` and the retrieval figures of a few queries."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from rockir_jax import sharding
from rockir_jax.images import read_image
from rockir_jax.retrieval.figures import query_from_index, retrieval_figure
from rockir_jax.retrieval.index import RetrievalIndex
from rockir_jax.retrieval.knn import knn
from rockir_jax.retrieval.metrics import (
    METADATA_METRICS,
    PER_SAMPLE,
    PREFIX_LEVEL,
    RANKING_METRICS,
    metric_key,
    metric_label,
)

FIGURE_IMAGE_SIZE = 224
"""Tiles of the figures are shown at the paper's input size, whatever size the model embeds."""

LEVEL_HEADERS = {"sample": "same sample", "reservoir": "same reservoir", PREFIX_LEVEL: f"same {PREFIX_LEVEL}"}


def metrics_markdown(report: Mapping[str, Any]) -> str:
    """The report of :func:`evaluate` as Markdown: a table per relevance level, then metadata."""
    k, metrics, levels = report["k"], report["metrics"], report["levels"]
    lines = [
        "# Retrieval evaluation",
        "",
        f"- model: `{json.dumps(report['model'])}`",
        f"- database: `{report['db']}` ({report['n_images']} images, {report['n_samples']} samples, "
        f"{report['n_reservoirs']} reservoirs); every image queries all others, itself excluded",
    ]
    if report["k_requested"] != k:
        lines.append(
            f"- k = {k}, not the requested {report['k_requested']}: the database ranks only "
            f"{report['n_images'] - 1} other images per query"
        )
    seen = report["seen_in_training"]
    if seen is not None:
        samples = ", ".join(seen["samples"]) if seen["samples"] else "none"
        lines.append(
            f"- queries whose sample also has slices in the database's train/ split: "
            f"{seen['n_queries']} of {report['n_images']} (samples: {samples})"
        )
    lines += [
        "",
        "| metric | " + " | ".join(LEVEL_HEADERS[level] for level in levels) + " |",
        "| --- |" + " ---: |" * len(levels),
    ]
    for name, (_, description) in RANKING_METRICS.items():
        cells = " | ".join(f"{metrics[metric_key(level, name, k)]:.4f}" for level in levels)
        lines.append(f"| {description.format(k=k)} | {cells} |")
    lines.append("")
    if PREFIX_LEVEL in levels:
        lines += [
            f"`{PREFIX_LEVEL}`: relevant when the file names share their first 2 characters, the "
            "original RockIR evaluation's relevance.",
            "",
        ]
    per_sample = sorted(key for key in metrics if key.startswith(f"reservoir{PER_SAMPLE}/"))
    if per_sample:
        lines += [
            f"Per sample ({report['n_samples']} samples): each sample's mean embedding queries the other "
            "samples'; relevant when the reservoir is the query's:",
            "",
        ]
        lines += [f"- {metric_label(key, k)}: {metrics[key]:.4f}" for key in per_sample]
        lines.append("")
    if any(key.startswith("metadata/") for key in metrics):
        lines += [f"Metadata, over {report['n_images_with_metadata']} images with known values:", ""]
        lines += [
            f"- {label}: {metrics[f'metadata/{name}']:.4f} per slice, "
            f"{metrics[f'metadata{PER_SAMPLE}/{name}']:.4f} per sample (mean of its slices' predictions)"
            for name, label in METADATA_METRICS.items()
        ]
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
    # Figures are one process's work: its own devices rank, no other process takes part.
    local = sharding.make_mesh(jax.local_devices())
    _, rankings = knn(
        index.embeddings[rows], index.embeddings, len(index) - 1, exclude_indices=rows, mesh=local
    )
    load = lambda row: read_image(index.paths[row], FIGURE_IMAGE_SIZE)
    paths = []
    for row, ranking in zip(rows, rankings, strict=True):
        query = query_from_index(index, int(row), load, perm_unit=perm_unit)
        target = Path(out) / f"retrieval_{Path(index.paths[row]).stem}.png"
        paths.append(retrieval_figure(target, query, ranking, index, load, perm_unit=perm_unit))
    return paths

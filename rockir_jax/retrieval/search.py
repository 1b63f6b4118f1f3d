"""One query: the database images most like a query image, and its predicted metadata.

The database is either an image folder (flat or split layout, :mod:`rockir_jax.data.layout`), embedded
on every call, or a saved index (:mod:`rockir_jax.retrieval.index`), loaded instead: only the query is
embedded, and the index must come from the same model. The query's sample is its file name's
(``E002M0_slice1.png`` → ``E002M0``) or, failing that, its folder's; its pixel size is the one given or
its sample's in the metadata CSV. With a pixel size the predicted permeability is in the CSV's units
(× ``Pixelsize**2``); without, the scaled ``log10(k / Pixelsize²) / 5`` is reported and said to be so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rockir_jax.data.database import DEFAULT_SPLIT, image_table, list_images
from rockir_jax.data.layout import sample_from_filename
from rockir_jax.data.metadata import (
    DataValidationError,
    check_image,
    read_image,
    read_metadata,
    sample_lookup,
    targets_to_physical,
)
from rockir_jax.retrieval.evaluation import build_index, embed_table
from rockir_jax.retrieval.figures import Query, retrieval_figure
from rockir_jax.retrieval.index import META_FILE, RetrievalIndex, load_index
from rockir_jax.retrieval.knn import knn
from rockir_jax.retrieval.loading import LoadedModel
from rockir_jax.retrieval.report import FIGURE_IMAGE_SIZE


@dataclasses.dataclass(frozen=True)
class QueryResult:
    """One query's hits (database rows, nearest first) and predictions."""

    path: Path
    sample: str
    reservoir: str
    embedding: np.ndarray  # (D,)
    distances: np.ndarray  # (k,) squared L2
    rows: np.ndarray  # (k,) database rows
    predicted_targets: np.ndarray | None  # (T,) raw regression output
    pixel_size: float | None


def open_database(
    model: LoadedModel,
    db: str | Path,
    metadata_csv: str | Path | None = None,
    split: str = DEFAULT_SPLIT,
    batch_size: int = 64,
) -> RetrievalIndex:
    """A saved index directory (checked to come from ``model``) or an embedded image folder."""
    db = Path(db)
    if not (db / META_FILE).is_file():
        table = list_images(db, metadata_csv, split, model.target_spec)
        return build_index(model, table, batch_size)
    index = load_index(db)
    if index.model != model.identity:
        raise ValueError(
            f"{db} was built by model {index.model}, not by {model.identity}: its embeddings are not "
            "comparable; pass the same model or an image folder as --db"
        )
    return index


def _ranking(
    embedding: np.ndarray, index: RetrievalIndex, query: Path, k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(squared distances, rows) of the ``k`` (default: all) nearest rows, the query's file excluded."""
    same_file = [row for row, p in enumerate(index.paths) if Path(p).absolute() == query.absolute()]
    exclude = np.array(same_file[:1]) if same_file else None
    k = min(len(index) - len(same_file[:1]), len(index) if k is None else k)
    distances, rows = knn(embedding[None], index.embeddings, k, exclude_indices=exclude)
    return distances[0], rows[0]


def _query_sample(path: Path, known: Sequence[str]) -> str:
    """The sample of a query image: its file name's, or its folder's when only that one is known."""
    from_name = sample_from_filename(path.name)
    return path.parent.name if from_name not in known and path.parent.name in known else from_name


def search(
    model: LoadedModel,
    index: RetrievalIndex,
    query: str | Path,
    k: int = 10,
    metadata_csv: str | Path | None = None,
    pixel_size: float | None = None,
) -> QueryResult:
    """Embeds ``query`` and finds its ``k`` nearest database rows (the query itself excluded when it
    is one of them)."""
    query = Path(query)
    problem = check_image(query) if query.is_file() else f"{query}: no such query image"
    if problem:
        raise DataValidationError([problem])
    metadata = read_metadata(metadata_csv, model.target_spec) if metadata_csv is not None else None
    sample = _query_sample(query, () if metadata is None else list(sample_lookup(metadata)))
    table = image_table([(query, sample)], metadata, model.target_spec)
    embedded = embed_table(model, table, progress=None)
    embedding = embedded["embedding"][0]
    distances, rows = _ranking(embedding, index, query, k)
    known_pixel = table.pixel_size[0] if np.isfinite(table.pixel_size[0]) else None
    return QueryResult(
        path=query,
        sample=str(table.samples[0]),
        reservoir=str(table.reservoirs[0]),
        embedding=embedding,
        distances=distances,
        rows=rows,
        predicted_targets=embedded["reg"][0] if "reg" in embedded else None,
        pixel_size=pixel_size if pixel_size is not None else known_pixel,
    )


def predicted_metadata(result: QueryResult, model: LoadedModel) -> tuple[float, float] | None:
    """(porosity, permeability): physical when the pixel size is known, else the scaled target."""
    if result.predicted_targets is None:
        return None
    if result.pixel_size is None:
        return float(result.predicted_targets[0]), float(result.predicted_targets[1])
    porosity, permeability = targets_to_physical(
        result.predicted_targets, result.pixel_size, model.target_spec
    )
    return float(porosity), float(permeability)


def report(result: QueryResult, index: RetrievalIndex, model: LoadedModel, perm_unit: str = "") -> str:
    """The hits as a table and the query's predictions, as printed by the command."""
    lines = [f"query: {result.path} (sample {result.sample}, reservoir {result.reservoir})"]
    predicted = predicted_metadata(result, model)
    if predicted is None:
        lines.append("predicted metadata: none (this model has no regression head)")
    elif result.pixel_size is None:
        lines.append(f"predicted porosity: {predicted[0]:.6g}")
        lines.append(
            f"predicted permeability: log10(k / Pixelsize²) / 5 = {predicted[1]:.6g} (scaled: the pixel "
            "size is unknown; pass --pixel-size or --metadata with the query's sample)"
        )
    else:
        lines.append(f"predicted porosity: {predicted[0]:.6g}")
        unit = f" {perm_unit}" if perm_unit else ""
        lines.append(f"predicted permeability: {predicted[1]:.6g}{unit} (pixel size {result.pixel_size:g})")
    lines.append(f"{'rank':>4}  {'distance':>10}  {'sample':<12} {'reservoir':<10} path")
    for rank, (row, distance) in enumerate(zip(result.rows, result.distances, strict=True), 1):
        lines.append(
            f"{rank:>4}  {distance:>10.6f}  {index.samples[row]:<12} {index.reservoirs[row]:<10} "
            f"{index.paths[row]}"
        )
    return "\n".join(lines)


def write_query_figure(
    path: str | Path,
    result: QueryResult,
    index: RetrievalIndex,
    model: LoadedModel,
    perm_unit: str = "",
) -> Path:
    """The 3x3 retrieval figure of the query against the whole database."""
    _, ranking = _ranking(result.embedding, index, result.path)
    predicted = predicted_metadata(result, model)
    title = f"query: {result.sample}"
    if predicted is not None:
        unit = "" if result.pixel_size is None else f" {perm_unit}"
        kind = "scaled k" if result.pixel_size is None else "k"
        title += f"\npred φ {predicted[0]:.3f}\npred {kind} {predicted[1]:.3g}{unit}"
    image = read_image(result.path, FIGURE_IMAGE_SIZE)
    query = Query(image=image, sample=result.sample, reservoir=result.reservoir, title=title)
    load = lambda row: read_image(index.paths[row], FIGURE_IMAGE_SIZE)
    return retrieval_figure(path, query, ranking, index, load, perm_unit=perm_unit)

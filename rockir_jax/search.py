"""Query command: the database images most like one query image, and its predicted metadata.

    python -m rockir_jax.search --workdir runs/default --db <folder or saved index> --query <image> \
        [-k 10] [--metadata <csv>] [--pixel-size <µm>] [--figure out.png]

``--db`` is either an image folder (flat or split layout, see :mod:`rockir_jax.retrieval.evaluate`),
embedded on every call, or an index saved by ``scripts/evaluate_retrieval.py`` (``<out>/index``),
which is loaded instead: only the query is embedded, and the index must come from the same model.
The query's sample is its file name's (``E002M0_slice1.png`` → ``E002M0``) or, failing that, its
folder's; its pixel size is ``--pixel-size`` or its sample's in ``--metadata``. With a pixel size the
predicted permeability is in the CSV's units (× ``Pixelsize**2``); without, the scaled
``log10(k / Pixelsize²) / 5`` is printed and said to be so.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rockir_jax import runtime
from rockir_jax.data.metadata import (
    DataValidationError,
    check_image,
    read_image,
    read_metadata,
    sample_from_filename,
    targets_to_physical,
)
from rockir_jax.retrieval import evaluate
from rockir_jax.retrieval.figures import Query, retrieval_figure
from rockir_jax.retrieval.index import META_FILE, RetrievalIndex, load_index
from rockir_jax.retrieval.knn import knn


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
    model: evaluate.LoadedModel,
    db: str | Path,
    metadata_csv: str | Path | None = None,
    split: str = evaluate.DEFAULT_SPLIT,
    batch_size: int = 64,
) -> RetrievalIndex:
    """A saved index directory (checked to come from ``model``) or an embedded image folder."""
    db = Path(db)
    if not (db / META_FILE).is_file():
        table = evaluate.list_images(db, metadata_csv, split, model.target_spec)
        return evaluate.build_index(model, table, batch_size)
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
    model: evaluate.LoadedModel,
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
    sample = _query_sample(query, () if metadata is None else list(metadata.index))
    table = evaluate.image_table([(query, sample)], metadata, model.target_spec)
    embedded = evaluate.embed_table(model, table, progress=None)
    embedding = embedded["embedding"][0]
    distances, rows = _ranking(embedding, index, query, k)
    known_pixel = table.pixel_size[0] if np.isfinite(table.pixel_size[0]) else None
    return QueryResult(
        path=query,
        sample=sample,
        reservoir=str(table.reservoirs[0]),
        embedding=embedding,
        distances=distances,
        rows=rows,
        predicted_targets=embedded["reg"][0] if "reg" in embedded else None,
        pixel_size=pixel_size if pixel_size is not None else known_pixel,
    )


def predicted_metadata(result: QueryResult, model: evaluate.LoadedModel) -> tuple[float, float] | None:
    """(porosity, permeability): physical when the pixel size is known, else the scaled target."""
    if result.predicted_targets is None:
        return None
    if result.pixel_size is None:
        return float(result.predicted_targets[0]), float(result.predicted_targets[1])
    porosity, permeability = targets_to_physical(
        result.predicted_targets, result.pixel_size, model.target_spec
    )
    return float(porosity), float(permeability)


def report(
    result: QueryResult, index: RetrievalIndex, model: evaluate.LoadedModel, perm_unit: str = ""
) -> str:
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
    model: evaluate.LoadedModel,
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
    image = read_image(result.path, evaluate.FIGURE_IMAGE_SIZE)
    query = Query(image=image, sample=result.sample, reservoir=result.reservoir, title=title)
    load = lambda row: read_image(index.paths[row], evaluate.FIGURE_IMAGE_SIZE)
    return retrieval_figure(path, query, ranking, index, load, perm_unit=perm_unit)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rockir_jax.search", description=__doc__.splitlines()[0])
    evaluate.add_model_arguments(parser)
    parser.add_argument("--db", type=Path, required=True, help="image folder, or a saved index directory")
    parser.add_argument("--query", type=Path, required=True, help="query image")
    parser.add_argument("-k", type=int, default=10, help="number of hits")
    parser.add_argument("--split", default=evaluate.DEFAULT_SPLIT, help="split of a split-layout --db folder")
    parser.add_argument(
        "--metadata", type=Path, help="metadata CSV (the query's and the folder's pixel size)"
    )
    parser.add_argument("--pixel-size", type=float, help="the query's pixel size (overrides --metadata)")
    parser.add_argument("--figure", type=Path, help="write the 3x3 retrieval figure to this PNG")
    parser.add_argument("--perm-unit", default="mD", help="unit of the CSV's Permeability")
    parser.add_argument("--batch-size", type=int, default=64, help="images per embedding batch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runtime.set_up_command_line_run()
    try:
        model = evaluate.model_from_arguments(args)
        index = open_database(model, args.db, args.metadata, args.split, args.batch_size)
        result = search(model, index, args.query, args.k, args.metadata, args.pixel_size)
        print(report(result, index, model, args.perm_unit))
        if args.figure is not None:
            print(f"figure: {write_query_figure(args.figure, result, index, model, args.perm_unit)}")
    except (FileNotFoundError, ValueError) as err:  # DataValidationError is a ValueError
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()

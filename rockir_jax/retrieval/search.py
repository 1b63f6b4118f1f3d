"""Queries: the database images most like a query image, and its predicted metadata.

The database is either an image folder (flat or split layout, :mod:`rockir_jax.data.layout`), embedded
when opened, or a saved index (:mod:`rockir_jax.retrieval.index`), loaded instead and accepted only from
the same model. A :class:`Searcher` keeps the model and the index resident and answers queries with
programs compiled once per padded batch size (the command line's one query and the search page's
concurrent ones alike). The query's sample is its file name's (``E002M0_slice1.png`` → ``E002M0``) or,
failing that, its folder's; its pixel size is the one given or its sample's in the metadata CSV. With a
pixel size the predicted permeability is in the CSV's units (× ``Pixelsize**2``); without, the scaled
``log10(k / Pixelsize²) / 5`` is reported and said to be so.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import jax
import numpy as np
import pandas as pd

from rockir_jax import sharding
from rockir_jax.data.database import DEFAULT_SPLIT, DEFAULT_TARGETS, image_table, list_images
from rockir_jax.data.layout import sample_from_filename
from rockir_jax.data.metadata import (
    DataValidationError,
    TargetSpec,
    read_metadata,
    sample_lookup,
    targets_to_physical,
)
from rockir_jax.data.pipeline import normalize
from rockir_jax.images import check_image, read_image
from rockir_jax.retrieval.embed import make_embed_step
from rockir_jax.retrieval.evaluation import build_index
from rockir_jax.retrieval.figures import Query, retrieval_figure
from rockir_jax.retrieval.index import META_FILE, RetrievalIndex, load_index
from rockir_jax.retrieval.knn import KnnIndex
from rockir_jax.retrieval.loading import LoadedModel
from rockir_jax.retrieval.report import FIGURE_IMAGE_SIZE

QUERY_BATCH_SIZES = (1, 4, 16)
"""Padded query batch sizes: each is compiled once, and concurrent queries share one model call."""
MAX_HITS = 50
"""Hits a :class:`Searcher` returns at most per query (fixed, so that k never recompiles)."""
SCALED_PERMEABILITY = "log10(k / Pixelsize²) / 5"
"""What a predicted permeability is when the pixel size is unknown."""


@dataclasses.dataclass(frozen=True)
class QueryResult:
    """One query's hits (database rows, nearest first) and predictions."""

    name: str  # the query's file (or upload) name
    sample: str
    reservoir: str
    embedding: np.ndarray  # (D,)
    distances: np.ndarray  # (k,) squared L2
    rows: np.ndarray  # (k,) database rows
    predicted_targets: np.ndarray | None  # (T,) raw regression output
    pixel_size: float | None
    row: int | None = None  # the query's own database row, never one of its hits


def check_comparable(index: RetrievalIndex, model: LoadedModel, source: str | Path) -> None:
    """Raises ``ValueError`` unless the index ``source`` was built by ``model``."""
    if index.model != model.identity:
        raise ValueError(
            f"{source} was built by model {index.model}, not by {model.identity}: its embeddings are not "
            "comparable; use an index built by the same model"
        )


def open_index(model: LoadedModel, directory: str | Path) -> RetrievalIndex:
    """The saved index in ``directory``, checked to come from ``model``."""
    index = load_index(directory)
    check_comparable(index, model, directory)
    return index


def open_database(
    model: LoadedModel,
    db: str | Path,
    metadata_csv: str | Path | None = None,
    split: str = DEFAULT_SPLIT,
    batch_size: int = 64,
) -> RetrievalIndex:
    """A saved index directory (checked to come from ``model``) or an embedded image folder."""
    db = Path(db)
    if (db / META_FILE).is_file():
        return open_index(model, db)
    return build_index(model, list_images(db, metadata_csv, split, model.target_spec), batch_size)


@dataclasses.dataclass
class _Pending:
    image: np.ndarray
    exclude_row: int
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    outputs: tuple[np.ndarray, ...] | None = None
    error: BaseException | None = None


class Searcher:
    """A model and a database index kept resident for queries; safe to call from many threads.

    Queries that arrive while the model is busy wait, then go through together in one call, padded to
    the next of ``batch_sizes`` (larger groups are split), so no query shape is ever compiled twice;
    model and search calls run one at a time, which is all a CPU host has room for. The database is
    a :class:`KnnIndex` over all devices; the model embeds on one device.

    Args:
        model: the model that built ``index`` (checked).
        index: the database.
        max_hits: the most hits one query gets (capped at ``len(index) - 1``: a query that is a
            database image leaves its own row out).
        batch_sizes: padded query batch sizes, ascending.
    """

    def __init__(
        self,
        model: LoadedModel,
        index: RetrievalIndex,
        *,
        max_hits: int = MAX_HITS,
        batch_sizes: Sequence[int] = QUERY_BATCH_SIZES,
    ):
        check_comparable(index, model, "the index")
        if len(index) < 2:
            raise ValueError(f"the index has {len(index)} image(s); searching needs at least 2")
        self.model = model
        self.index = index
        if max_hits < 1:
            raise ValueError(f"a search needs at least 1 hit, got {max_hits}")
        self.max_hits = min(max_hits, len(index) - 1)
        self.batch_sizes = tuple(sorted(batch_sizes))
        self.knn = KnnIndex(index.embeddings)
        mesh = sharding.make_mesh(jax.devices()[:1])
        self._embed = make_embed_step(mesh, model.module, model.orientations)
        self._variables = sharding.replicate(model.variables, mesh)
        self._queue: list[_Pending] = []
        self._queue_lock = threading.Lock()
        self._model_lock = threading.Lock()

    def warm_up(self) -> None:
        """Compiles every padded batch size and the full ranking, so that no query waits on it."""
        image = np.zeros((self.model.image_size,) * 2 + (3,), np.uint8)
        with self._model_lock:
            for size in self.batch_sizes:
                self._run([_Pending(image, -1)] * size)
            self.knn.search(np.zeros((1, self.knn.dim), np.float32), len(self.index) - 1,
                            exclude_indices=np.array([-1]))  # fmt: skip

    def search(
        self,
        image: np.ndarray,
        k: int = 10,
        *,
        name: str,
        sample: str,
        reservoir: str,
        pixel_size: float | None = None,
        row: int | None = None,
    ) -> QueryResult:
        """The ``k`` nearest database rows of ``image`` (uint8, the model's input size, 3 channels).

        ``name``, ``sample``, ``reservoir`` and ``pixel_size`` describe the query (:func:`query_labels`);
        ``row`` is its own database row, if it is one, which is then no hit.
        """
        if not 1 <= k <= self.max_hits:
            raise ValueError(f"k must be between 1 and {self.max_hits}, got {k}")
        expected = (self.model.image_size, self.model.image_size, 3)
        if image.shape != expected or image.dtype != np.uint8:
            raise ValueError(f"query image must be uint8 {expected}, got {image.dtype} {image.shape}")
        request = _Pending(image, -1 if row is None else int(row))
        with self._queue_lock:
            self._queue.append(request)
        while not request.done.is_set():
            with self._model_lock:
                with self._queue_lock:
                    batch = self._queue[: self.batch_sizes[-1]]
                    del self._queue[: len(batch)]
                if batch:
                    self._run_and_deliver(batch)
        if request.error is not None:
            raise request.error
        embedding, reg, distances, rows = request.outputs
        return QueryResult(
            name=name,
            sample=sample,
            reservoir=reservoir,
            embedding=embedding,
            distances=distances[:k],
            rows=rows[:k],
            predicted_targets=reg,
            pixel_size=pixel_size,
            row=row,
        )

    def ranking(self, result: QueryResult) -> np.ndarray:
        """Every database row by increasing distance to the query, its own row left out."""
        exclude = np.array([-1 if result.row is None else result.row])
        with self._model_lock:
            _, rows = self.knn.search(result.embedding[None], len(self.index) - 1, exclude_indices=exclude)
        return rows[0]

    def _run_and_deliver(self, batch: list[_Pending]) -> None:
        try:
            outputs = self._run(batch)
        except BaseException as err:
            for request in batch:
                request.error = err
                request.done.set()
            raise
        for i, request in enumerate(batch):
            request.outputs = tuple(None if out is None else out[i] for out in outputs)
            request.done.set()

    def _run(self, batch: list[_Pending]) -> tuple[np.ndarray | None, ...]:
        """(embeddings, regression or None, distances, rows) of a batch, padded to a compiled size."""
        size = next(s for s in self.batch_sizes if s >= len(batch))
        images = np.zeros((size, *batch[0].image.shape), np.uint8)
        images[: len(batch)] = [request.image for request in batch]
        exclude = np.full(size, -1, np.int32)
        exclude[: len(batch)] = [request.exclude_row for request in batch]
        embedded = self._embed(self._variables, normalize(images))
        embeddings = np.asarray(embedded["embedding"])
        distances, rows = self.knn.search(embeddings, self.max_hits, exclude_indices=exclude)
        reg = np.asarray(embedded["reg"]) if "reg" in embedded else None
        return embeddings, reg, distances, rows


def _query_sample(path: Path, known: Sequence[str]) -> str:
    """The sample of a query image: its file name's, or its folder's when only that one is known."""
    from_name = sample_from_filename(path.name)
    return path.parent.name if from_name not in known and path.parent.name in known else from_name


def query_labels(
    name: str | Path,
    metadata: pd.DataFrame | None = None,
    target_spec: TargetSpec = DEFAULT_TARGETS,
    pixel_size: float | None = None,
    sample: str | None = None,
) -> tuple[str, str, float | None]:
    """(sample, reservoir, pixel size) of the query image ``name`` (a path or a file name).

    The sample is ``sample`` if given, else the name's (see the module doc); the reservoir and the
    pixel size come from ``metadata`` (:func:`rockir_jax.data.metadata.read_metadata`) where the
    sample is in it; ``pixel_size`` overrides the latter.
    """
    if sample is None:
        sample = _query_sample(Path(name), () if metadata is None else list(sample_lookup(metadata)))
    table = image_table([(name, sample)], metadata, target_spec)
    if pixel_size is None and np.isfinite(table.pixel_size[0]):
        pixel_size = float(table.pixel_size[0])
    return str(table.samples[0]), str(table.reservoirs[0]), pixel_size


PIXEL_SIZES_UM = (1e-3, 1e4)
"""The pixel sizes a query may state, in µm: from electron to coarse X-ray imaging."""


def check_pixel_size(value: float | None) -> float | None:
    """``value`` if it is a plausible pixel size in µm (or None: not known); else a ValueError."""
    if value is None:
        return None
    low, high = PIXEL_SIZES_UM
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"pixel size must be a number of µm between {low:g} and {high:g}, got {value:g}")
    return value


def search_file(
    searcher: Searcher,
    query: str | Path,
    k: int = 10,
    metadata_csv: str | Path | None = None,
    pixel_size: float | None = None,
) -> QueryResult:
    """Embeds the image file ``query`` and finds its ``k`` nearest database rows (at most
    ``searcher.max_hits``; the query itself is never a hit when it is one of them)."""
    query = Path(query)
    pixel_size = check_pixel_size(pixel_size)
    problem = check_image(query) if query.is_file() else f"{query}: no such query image"
    if problem:
        raise DataValidationError([problem], what="query image")
    spec = searcher.model.target_spec
    metadata = read_metadata(metadata_csv, spec) if metadata_csv is not None else None
    sample, reservoir, pixel_size = query_labels(query, metadata, spec, pixel_size)
    same_file = [row for row, p in enumerate(searcher.index.paths) if Path(p).absolute() == query.absolute()]
    return searcher.search(
        read_image(query, searcher.model.image_size),
        min(k, searcher.max_hits),
        name=str(query),
        sample=sample,
        reservoir=reservoir,
        pixel_size=pixel_size,
        row=same_file[0] if same_file else None,
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
    lines = [f"query: {result.name} (sample {result.sample}, reservoir {result.reservoir})"]
    predicted = predicted_metadata(result, model)
    if predicted is None:
        lines.append("predicted metadata: none (this model has no regression head)")
    elif result.pixel_size is None:
        lines.append(f"predicted porosity: {predicted[0]:.6g}")
        lines.append(
            f"predicted permeability: {SCALED_PERMEABILITY} = {predicted[1]:.6g} (scaled: the pixel "
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
    path: str | Path | BinaryIO,
    result: QueryResult,
    image: np.ndarray,
    searcher: Searcher,
    perm_unit: str = "",
    ranking: np.ndarray | None = None,
) -> Path | BinaryIO:
    """The 3x3 retrieval figure of the query (``image``, any size) against the whole database, as a
    PNG at ``path`` (a path or a binary file object); ``ranking`` is :meth:`Searcher.ranking`'s, when
    already computed (by every process of a multi-process job, where ranking is a collective)."""
    predicted = predicted_metadata(result, searcher.model)
    title = f"query: {result.sample}"
    if predicted is not None:
        unit = "" if result.pixel_size is None else f" {perm_unit}"
        kind = "scaled k" if result.pixel_size is None else "k"
        title += f"\npred φ {predicted[0]:.3f}\npred {kind} {predicted[1]:.3g}{unit}"
    query = Query(image=image, sample=result.sample, reservoir=result.reservoir, title=title)
    index = searcher.index
    load = lambda row: read_image(index.paths[row], FIGURE_IMAGE_SIZE)
    if ranking is None:
        ranking = searcher.ranking(result)
    return retrieval_figure(path, query, ranking, index, load, perm_unit=perm_unit)

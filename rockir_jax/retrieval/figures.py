"""The original RockIR's qualitative retrieval figure, as a PNG.

The query sits in a column on the left; three rows hold the best three hits (in ranking order) of one kind
each: the same sample, the same reservoir but another sample, another reservoir. Every hit is titled with
its absolute rank (1 = nearest, the query itself excluded) and its true and predicted porosity and
permeability. Permeabilities are shown as given: pass physical values (multiplied back by Pixelsize²).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from rockir_jax.retrieval.index import RetrievalIndex

ROWS = ("same sample", "same reservoir", "other reservoir")
ImageSource = Callable[[int], ArrayLike] | np.ndarray


@dataclasses.dataclass(frozen=True)
class Query:
    """The query of a figure: its image, the labels that define the rows, and a tile title."""

    image: np.ndarray
    sample: str
    reservoir: str
    title: str = "query"


def _fmt(value: float | None, spec: str) -> str:
    return "?" if value is None or not math.isfinite(value) else format(value, spec)


def _value(array: np.ndarray | None, row: int) -> float | None:
    return None if array is None else float(array[row])


def tile_title(index: RetrievalIndex, row: int, rank: int | None = None, perm_unit: str = "") -> str:
    """Title of a database image: rank, sample, and true / predicted porosity and permeability."""
    unit = f" {perm_unit}" if perm_unit else ""
    por = (_value(index.true_porosity, row), _value(index.predicted_porosity, row))
    perm = (_value(index.true_permeability, row), _value(index.predicted_permeability, row))
    head = f"rank {rank} · {index.samples[row]}" if rank is not None else str(index.samples[row])
    return (
        f"{head}\nφ {_fmt(por[0], '.3f')} / pred {_fmt(por[1], '.3f')}\n"
        f"k {_fmt(perm[0], '.3g')} / pred {_fmt(perm[1], '.3g')}{unit}"
    )


def _image(images: ImageSource, row: int) -> np.ndarray:
    return np.asarray(images(row) if callable(images) else images[row])


def query_from_index(index: RetrievalIndex, row: int, images: ImageSource, perm_unit: str = "") -> Query:
    """The :class:`Query` for database row ``row`` (its image loaded from ``images``)."""
    return Query(
        image=_image(images, row),
        sample=str(index.samples[row]),
        reservoir=str(index.reservoirs[row]),
        title="query: " + tile_title(index, row, perm_unit=perm_unit),
    )


def select_hits(
    ranking: Sequence[int] | np.ndarray,
    samples: np.ndarray,
    reservoirs: np.ndarray,
    query_sample: str,
    query_reservoir: str,
    per_row: int = 3,
) -> list[list[int]]:
    """Positions in ``ranking`` (0-based) of the first ``per_row`` hits of each of :data:`ROWS`.

    Rows may come back shorter than ``per_row`` when the ranking holds too few hits of a kind.
    """
    ranking = np.asarray(ranking)
    same_sample = samples[ranking] == query_sample
    same_reservoir = reservoirs[ranking] == query_reservoir
    kinds = (same_sample, same_reservoir & ~same_sample, ~same_reservoir)
    return [np.flatnonzero(kind)[:per_row].tolist() for kind in kinds]


def retrieval_figure(
    path: str | os.PathLike | BinaryIO,
    query: Query,
    ranking: Sequence[int] | np.ndarray,
    index: RetrievalIndex,
    images: ImageSource,
    *,
    per_row: int = 3,
    perm_unit: str = "",
    tile_inches: float = 2.6,
    dpi: int = 100,
) -> Path | BinaryIO:
    """Write the 3x3 retrieval figure of ``query`` to the PNG ``path``.

    Args:
        path: output PNG, a path or a binary file object.
        query: the query (see :func:`query_from_index` for a database row).
        ranking: database rows by increasing distance, the query itself excluded.
        index: metadata of the database rows (samples, reservoirs, true and predicted values).
        images: ``images(row)`` or ``images[row]`` gives a database image (H, W) or (H, W, C).
        per_row: hits per row.
        perm_unit: unit label appended to permeabilities (e.g. ``"m²"``).
        tile_inches, dpi: the PNG is ``(per_row + 1) · tile_inches · dpi`` pixels wide and
            ``3 · tile_inches · dpi`` high.

    Returns:
        The PNG path (or the file object).
    """
    ranking = np.asarray(ranking)
    hits = select_hits(ranking, index.samples, index.reservoirs, query.sample, query.reservoir, per_row)
    cols = per_row + 1
    # A bare Figure (no pyplot) renders with Agg and leaves no global figure state behind.
    fig = Figure(figsize=(cols * tile_inches, len(ROWS) * tile_inches), dpi=dpi)
    axes = fig.subplots(len(ROWS), cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    _show(axes[0, 0], query.image, query.title)
    for ax in axes[1:, 0]:
        ax.axis("off")
    for r, (label, positions) in enumerate(zip(ROWS, hits, strict=True)):
        axes[r, 1].set_ylabel(label, fontsize=9)
        for c in range(per_row):
            ax = axes[r, c + 1]
            if c >= len(positions):
                ax.text(0.5, 0.5, "no hit", ha="center", va="center", transform=ax.transAxes)
                continue
            row = int(ranking[positions[c]])
            title = tile_title(index, row, rank=positions[c] + 1, perm_unit=perm_unit)
            _show(ax, _image(images, row), title)
    fig.tight_layout()
    out = path if hasattr(path, "write") else Path(path)
    fig.savefig(out, format="png", dpi=dpi)
    return out


def _show(ax: Axes, image: np.ndarray, title: str) -> None:
    image = np.squeeze(np.asarray(image))
    # 8-bit slices keep their absolute grey levels so tiles can be compared by brightness.
    levels = {"vmin": 0, "vmax": 255} if image.dtype == np.uint8 and image.ndim == 2 else {}
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None, **levels)
    ax.set_title(title, fontsize=7)

"""Random-access views of one split: what the grain pipeline reads.

A :class:`SplitSource` pairs a random-access ``records`` sequence (``records[i]`` is a dict with
``image`` uint8 ``(S, S, 3)``, ``sample_id``, ``reservoir_id``, ``targets``, ``index``) with the
small per-image label arrays, so the pair sampler can find images of a sample without decoding any
image. It comes either from the TFDS ArrayRecord cache
(:func:`rockir_jax.data.tfds_builder.load_split`, the normal path) or straight from the files
(:func:`from_index`, decoding on every access: for quick looks and tests).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rockir_jax.data.metadata import DatasetIndex, SplitTable
from rockir_jax.images import read_image


@dataclasses.dataclass(frozen=True)
class SplitSource:
    """One split: random-access records plus its label arrays (row ``i`` of each = record ``i``)."""

    records: Sequence[Mapping[str, Any]]
    sample_ids: np.ndarray  # (N,) int32
    reservoir_ids: np.ndarray  # (N,) int32
    targets: np.ndarray  # (N, T) float32
    image_size: int

    def __len__(self) -> int:
        return len(self.sample_ids)


@dataclasses.dataclass(frozen=True)
class _FileRecords(Sequence):
    """Decodes ``table.paths[i]`` on each access; picklable, so grain workers can use it."""

    table: SplitTable
    image_size: int

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:  # type: ignore[override]
        return {
            "image": read_image(self.table.paths[i], self.image_size),
            "sample_id": self.table.sample_ids[i],
            "reservoir_id": self.table.reservoir_ids[i],
            "targets": self.table.targets[i],
            "index": np.int32(i),
        }


def from_index(index: DatasetIndex, split: str, image_size: int) -> SplitSource:
    """A source that reads the split's image files directly (no cache)."""
    return from_table(index.splits[split], image_size)


def from_table(table: SplitTable, image_size: int) -> SplitSource:
    """A source that reads ``table``'s image files directly (no cache)."""
    return SplitSource(
        records=_FileRecords(table, image_size),
        sample_ids=table.sample_ids,
        reservoir_ids=table.reservoir_ids,
        targets=table.targets,
        image_size=image_size,
    )

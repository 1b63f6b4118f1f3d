"""grain input pipelines: random training pairs (the original's sampler, with optional augmentations) and
an in-order evaluation pass.

Pair ``g`` of the global stream draws everything from ``np.random.default_rng([seed, g])``, so the
stream depends on neither worker nor process count, and the iterator's state (the next batch number) is
checkpointed with the training state; docs/internals.md says how to save and restore it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from rockir_jax.data.metadata import same_metadata
from rockir_jax.data.sources import SplitSource

Batch = dict[str, np.ndarray]

AUGMENTATIONS = ("flips", "dihedral")
# What makes a pair's metadata "the same" (the label of the metadata branch): its porosity and
# permeability within a tolerance (the original), or its reservoir (the CSV's rock label).
METADATA_LABELS = ("measurements", "reservoir")

# Bounded prefetch: grain's default (500 elements) would hold hundreds of full batches here.
_READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)


def normalize(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [-1, 1], as the original: ``(x / 255 - 0.5) / 0.5``."""
    return (images.astype(np.float32) / 255.0 - 0.5) / 0.5


def steps_per_epoch(num_images: int, global_batch_size: int) -> int:
    """Batches per epoch of ``num_images`` pairs (the last one partly from the next epoch)."""
    return math.ceil(num_images / global_batch_size)


def _read(records: Sequence[Mapping[str, Any]], indices: Sequence[int]) -> list[Mapping[str, Any]]:
    # ArrayRecord sources read a batch of keys in one call.
    getitems = getattr(records, "__getitems__", None)
    if getitems is not None:
        return list(getitems(list(indices)))
    return [records[i] for i in indices]


def _local_rows(global_batch_size: int, process_index: int | None, process_count: int | None):
    """(this process's first row, rows per process) of a global batch."""
    if process_index is None or process_count is None:
        # Imported here so grain worker processes, which unpickle this module, need not load jax.
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by {process_count} processes"
        )
    local = global_batch_size // process_count
    return process_index * local, local


def _finish(dataset: grain.MapDataset, num_workers: int) -> grain.DatasetIterator:
    iter_dataset = dataset.to_iter_dataset(_READ_OPTIONS)
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():
            raise ValueError(
                "grain's worker processes read absl flags, which this program has not parsed: call "
                "absl.flags.FLAGS.mark_as_parsed() (the rockir commands do) or use num_workers=0"
            )
        iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iter_dataset)


@dataclasses.dataclass(frozen=True)
class _PairBatches:
    """Maps a batch number to this process's rows of that global batch (picklable for workers)."""

    source: SplitSource
    seed: int
    global_batch_size: int
    first_row: int
    local_batch_size: int
    same_sample_probability: float
    same_reservoir_probability: float
    same_meta_tol: float
    metadata_label: str
    augment: str
    grey_jitter: float
    samples: _Groups
    reservoirs: _Groups

    def pair(self, g: int) -> tuple[int, int, np.ndarray, np.ndarray]:
        """(image 0, image 1, orientations [[h0, v0, t0], [h1, v1, t1]], grey [[a0, b0], [a1, b1]]) of
        global pair ``g``: flips, transpose, contrast factor and level shift per image."""
        rng = np.random.default_rng([self.seed, g])
        i0 = int(rng.integers(len(self.source)))
        coin = rng.random()
        if coin < self.same_sample_probability:
            i1 = self.samples.draw(i0, rng)
        elif coin < self.same_sample_probability + self.same_reservoir_probability:
            i1 = self.reservoirs.draw(i0, rng)
        else:
            i1 = int(rng.integers(len(self.source)))
        # Drawn in this order so that "flips" without jitter keeps the original's stream.
        flips = (rng.random(4) < 0.5).reshape(2, 2)
        transpose = rng.random(2) < 0.5 if self.augment == "dihedral" else np.zeros(2, bool)
        grey = np.array([[1.0, 0.0], [1.0, 0.0]])
        if self.grey_jitter > 0:
            grey += rng.uniform(-self.grey_jitter, self.grey_jitter, (2, 2))
        return i0, i1, np.column_stack([flips, transpose]), grey

    def __call__(self, step: int) -> Batch:
        start = step * self.global_batch_size + self.first_row
        pairs = [self.pair(g) for g in range(start, start + self.local_batch_size)]
        i0 = np.array([p[0] for p in pairs])
        i1 = np.array([p[1] for p in pairs])
        # Image 0 of every pair, then image 1.
        orientations = [p[2][0] for p in pairs] + [p[2][1] for p in pairs]
        grey = np.array([p[3][0] for p in pairs] + [p[3][1] for p in pairs], np.float32)
        records = _read(self.source.records, [*i0, *i1])
        images = [_orient(np.asarray(r["image"]), *o) for r, o in zip(records, orientations, strict=True)]
        images = normalize(np.stack(images))
        if self.grey_jitter > 0:
            images = images * grey[:, 0, None, None, None] + grey[:, 1, None, None, None]
        t0, t1 = self.source.targets[i0], self.source.targets[i1]
        same_sample = self.source.sample_ids[i0] == self.source.sample_ids[i1]
        if self.metadata_label == "reservoir":
            same_meta = self.source.reservoir_ids[i0] == self.source.reservoir_ids[i1]
        else:
            same_meta = same_metadata(t0, t1, self.same_meta_tol)
        return {
            "image0": images[: len(pairs)],
            "image1": images[len(pairs) :],
            "targets0": t0,
            "targets1": t1,
            "same_sample": same_sample.astype(np.float32),
            "same_meta": same_meta.astype(np.float32),
            "reservoir0": self.source.reservoir_ids[i0].astype(np.int32),
            "reservoir1": self.source.reservoir_ids[i1].astype(np.int32),
        }


def _orient(image: np.ndarray, horizontal: bool, vertical: bool, transpose: bool) -> np.ndarray:
    if horizontal:
        image = image[:, ::-1]
    if vertical:
        image = image[::-1]
    if transpose:
        image = image.swapaxes(0, 1)
    return image


@dataclasses.dataclass(frozen=True)
class _Groups:
    """Images grouped by an id (sample or reservoir), for drawing a partner from an image's group."""

    start: np.ndarray  # per image: start of its group's run in `members`
    size: np.ndarray  # per image: number of images in its group
    members: np.ndarray  # image indices sorted by group

    @classmethod
    def of(cls, ids: Sequence[int]) -> _Groups:
        ids = np.asarray(ids)
        members = np.argsort(ids, kind="stable")
        _, first, inverse, counts = np.unique(
            ids[members], return_index=True, return_inverse=True, return_counts=True
        )
        start = np.empty(len(ids), np.int64)
        size = np.empty(len(ids), np.int64)
        start[members] = first[inverse]
        size[members] = counts[inverse]
        return cls(start, size, members)

    def draw(self, image: int, rng: np.random.Generator) -> int:
        """An image uniform within ``image``'s group (possibly ``image`` itself)."""
        return int(self.members[self.start[image] + rng.integers(self.size[image])])


def train_iterator(
    source: SplitSource,
    *,
    global_batch_size: int,
    seed: int,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    same_sample_probability: float = 0.5,
    same_reservoir_probability: float = 0.0,
    same_meta_tol: float = 0.1,
    metadata_label: str = "measurements",
    augment: str = "flips",
    grey_jitter: float = 0.0,
) -> grain.DatasetIterator:
    """Infinite iterator of this process's share of each global batch of random pairs.

    Each batch: ``image0``, ``image1`` float32 ``(B, S, S, 3)`` in [-1, 1] (before grey jitter); ``targets0``,
    ``targets1`` float32 ``(B, T)``; ``same_sample``, ``same_meta`` float32 ``(B,)``, with
    ``B = global_batch_size / process_count``. Process index and count default to JAX's.
    ``same_meta`` is 1 for targets within ``same_meta_tol`` (``metadata_label="measurements"``) or for
    the same reservoir (``"reservoir"``).
    """
    if len(source) == 0:
        raise ValueError("cannot sample pairs from an empty split")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
    if metadata_label not in METADATA_LABELS:
        raise ValueError(
            f"unknown metadata label {metadata_label!r}; choose one of {', '.join(METADATA_LABELS)}"
        )
    if not 0 <= grey_jitter < 1:
        raise ValueError(f"grey_jitter must be in [0, 1), got {grey_jitter}")
    if not (
        same_sample_probability >= 0
        and same_reservoir_probability >= 0
        and same_sample_probability + same_reservoir_probability <= 1
    ):
        raise ValueError(
            "same_sample_probability and same_reservoir_probability must be ≥ 0 and add up to at most 1, "
            f"got {same_sample_probability} and {same_reservoir_probability}"
        )
    first_row, local = _local_rows(global_batch_size, process_index, process_count)
    make_batch = _PairBatches(
        source,
        seed,
        global_batch_size,
        first_row,
        local,
        same_sample_probability,
        same_reservoir_probability,
        same_meta_tol,
        metadata_label,
        augment,
        grey_jitter,
        _Groups.of(source.sample_ids),
        _Groups.of(source.reservoir_ids),
    )
    # Element = batch number; sys.maxsize makes it endless while keeping random access.
    return _finish(grain.MapDataset.range(sys.maxsize).map(make_batch), num_workers)


@dataclasses.dataclass(frozen=True)
class _EvalBatches:
    """Maps a batch number to this process's rows of that global batch, padding past the end."""

    source: SplitSource
    global_batch_size: int
    first_row: int
    local_batch_size: int

    def __call__(self, step: int) -> Batch:
        start = step * self.global_batch_size + self.first_row
        rows = np.arange(start, start + self.local_batch_size)
        mask = rows < len(self.source)
        real = rows[mask]
        size = self.source.image_size
        images = np.zeros((len(rows), size, size, 3), np.float32)
        if len(real):
            records = _read(self.source.records, real)
            images[mask] = normalize(np.stack([np.asarray(r["image"]) for r in records]))

        def padded(values: np.ndarray, fill: float) -> np.ndarray:
            out = np.full((len(rows), *values.shape[1:]), fill, values.dtype)
            out[mask] = values[real]
            return out

        return {
            "image": images,
            "sample_id": padded(np.asarray(self.source.sample_ids, np.int32), -1),
            "reservoir_id": padded(np.asarray(self.source.reservoir_ids, np.int32), -1),
            "targets": padded(np.asarray(self.source.targets, np.float32), 0.0),
            "index": padded(np.arange(len(self.source), dtype=np.int32), -1),
            "mask": mask,
        }


def eval_iterator(
    source: SplitSource,
    *,
    global_batch_size: int,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """Every image of the split once, in table order, in fixed-size batches.

    Each batch: ``image`` float32 ``(B, S, S, 3)`` (normalised, no augmentation), ``sample_id``,
    ``reservoir_id``, ``index`` int32 ``(B,)``, ``targets`` float32 ``(B, T)`` and ``mask`` bool
    ``(B,)``. The last global batch is padded: padded rows have ``mask`` False, zero images and
    targets, and -1 ids and index.
    """
    first_row, local = _local_rows(global_batch_size, process_index, process_count)
    num_batches = math.ceil(len(source) / global_batch_size)
    make_batch = _EvalBatches(source, global_batch_size, first_row, local)
    return _finish(grain.MapDataset.range(num_batches).map(make_batch), num_workers)

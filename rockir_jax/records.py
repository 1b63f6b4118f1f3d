"""Writing TFDS ArrayRecord shards of decoded images, in worker processes when asked.

Kept apart from :mod:`rockir_jax.data` so that a worker process imports only TFDS, ArrayRecord,
Pillow and numpy (under a second), not the input pipeline's dependencies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import queue
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module
from tensorflow_datasets.core import example_serializer
from tqdm.auto import tqdm

from rockir_jax.images import read_image

# What TFDS itself writes: one record per chunk, for random access.
_WRITER_OPTIONS = "group_size:1"
# Images between two progress reports from a worker.
_REPORT_EVERY = 16


def features(image_size: int, num_targets: int) -> tfds.features.FeaturesDict:
    """The stored record's TFDS features."""
    return tfds.features.FeaturesDict(
        {
            # Raw bytes: the default encoding stores every pixel as an int64, and converting to that
            # took ten times longer than decoding the PNG.
            "image": tfds.features.Tensor(
                shape=(image_size, image_size, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
            ),
            "sample_id": tfds.features.Scalar(dtype=np.int32),
            "reservoir_id": tfds.features.Scalar(dtype=np.int32),
            "targets": tfds.features.Tensor(shape=(num_targets,), dtype=np.float32),
            "index": tfds.features.Scalar(dtype=np.int32),
        }
    )


@dataclasses.dataclass(frozen=True)
class Shard:
    """One output file and the table rows it holds."""

    file: str
    image_size: int
    paths: tuple[str, ...]
    sample_ids: np.ndarray
    reservoir_ids: np.ndarray
    targets: np.ndarray
    first_row: int


def write_shard(shard: Shard, report: Callable[[int], None]) -> int:
    """Decodes, serialises and writes ``shard``; returns its serialised bytes. Calls ``report(n)``
    after every ``n`` images written."""
    encoder = features(shard.image_size, shard.targets.shape[1])
    serializer = example_serializer.ExampleSerializer(encoder.get_serialized_info())
    writer = array_record_module.ArrayRecordWriter(shard.file, _WRITER_OPTIONS)
    num_bytes = unreported = 0
    try:
        for i, path in enumerate(shard.paths):
            example = encoder.encode_example(
                {
                    "image": read_image(path, shard.image_size),
                    "sample_id": shard.sample_ids[i],
                    "reservoir_id": shard.reservoir_ids[i],
                    "targets": shard.targets[i],
                    "index": np.int32(shard.first_row + i),
                }
            )
            # Sorted map keys: the default order depends on the process, and the files must not.
            record = serializer.get_tf_example(example).SerializeToString(deterministic=True)
            writer.write(record)
            num_bytes += len(record)
            unreported += 1
            if unreported == _REPORT_EVERY:
                report(unreported)
                unreported = 0
    finally:
        writer.close()
    report(unreported)
    return num_bytes


_progress_queue: Any = None  # a worker process's channel for progress reports


def _start_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _write_shard_in_worker(shard: Shard) -> int:
    return write_shard(shard, _progress_queue.put)


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Starts processes that do not re-run ``__main__``.

    Workers only call functions of this module. Re-running the parent's ``__main__`` in each of them
    (what spawn and forkserver do) would import JAX in every worker, seconds each, and would run an
    unguarded user script's top level again.
    """
    main = sys.modules["__main__"]
    saved = {name: getattr(main, name) for name in ("__spec__", "__file__") if hasattr(main, name)}
    main.__spec__ = None
    with contextlib.suppress(AttributeError):
        del main.__file__
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(main, name, value)


def write_shards(shards: list[Shard], workers: int, progress: tqdm) -> list[int]:
    """Every shard written, in ``workers`` processes (here when 1); their byte counts in order."""
    if workers <= 1:
        return [write_shard(shard, progress.update) for shard in shards]
    # Not fork: the parent may run JAX's threads.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        context.set_forkserver_preload([__name__])
    reports = context.Queue()
    with _without_main_module():
        pool = context.Pool(workers, initializer=_start_worker, initargs=(reports,))
    with pool:
        result = pool.map_async(_write_shard_in_worker, shards, chunksize=1)
        reported = 0
        while not result.ready():
            with contextlib.suppress(queue.Empty):
                count = reports.get(timeout=0.02)
                progress.update(count)
                reported += count
        sizes = result.get()  # raises a worker's exception here
    progress.update(sum(len(shard.paths) for shard in shards) - reported)  # reports still on their way
    return sizes

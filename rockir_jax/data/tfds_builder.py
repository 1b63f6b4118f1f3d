"""Materialises a validated data set into TFDS ArrayRecord files, cached by source and image size.

:func:`build_image_cache` decodes and resizes every image once and writes one TFDS split per data split
under ``<cache_dir>/<S>px-<fingerprint>/``; the fingerprint covers the images, the CSV, the targets and the
size, so any change rebuilds and otherwise the cache is reused. The files are the same for any worker
count. :func:`load_split` reads a split without TensorFlow. Features, shards and directory layout:
docs/internals.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from tqdm.auto import tqdm

from rockir_jax.data.metadata import DatasetIndex
from rockir_jax.data.sources import SplitSource
from rockir_jax.records import Shard, features, write_shards

# Bump when the stored layout, the image decoding or the CSV's interpretation changes, so old caches
# are not reused.
FORMAT_VERSION = 4
TABLES_FILE = "rockir_tables.json"
DATASET_NAME = "rockir_images"
DATASET_VERSION = "1.0.0"
FILE_FORMAT = "array_record"
# Shards per split when it is long enough, within these sizes: enough shards to keep every core busy,
# few enough files to keep them all open while training reads at random.
_SHARDS_PER_SPLIT = 64
_MIN_SHARD, _MAX_SHARD = 32, 4096

log = logging.getLogger(__name__)


def shard_bounds(length: int) -> list[tuple[int, int]]:
    """``[start, stop)`` rows of each shard of a split of ``length`` rows (none for an empty split)."""
    size = min(_MAX_SHARD, max(_MIN_SHARD, math.ceil(length / _SHARDS_PER_SPLIT)))
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def fingerprint(index: DatasetIndex, image_size: int) -> str:
    """Hex digest of everything the built dataset depends on (see the module docstring)."""
    files = []
    for split, table in index.splits.items():
        for path in table.paths:
            stat = os.stat(path)
            files.append([split, path, stat.st_size, stat.st_mtime_ns])
    payload = {
        "format": FORMAT_VERSION,
        "image_size": image_size,
        "csv_sha256": index.csv_sha256,
        "target_spec": [
            index.target_spec.log_permeability_divisor,
            index.target_spec.divide_by_pixel_area,
            list(index.target_spec.extra),
        ],
        "files": files,
    }
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _tables_json(index: DatasetIndex, image_size: int, key: str) -> dict[str, Any]:
    return {
        "fingerprint": key,
        "image_size": image_size,
        "samples": list(index.samples),
        "reservoirs": list(index.reservoirs),
        "target_names": list(index.target_names),
        "splits": {
            split: {
                "paths": list(table.paths),
                "sample_ids": table.sample_ids.tolist(),
                "reservoir_ids": table.reservoir_ids.tolist(),
                "targets": table.targets.tolist(),
                "pixel_size": table.pixel_size.tolist(),
            }
            for split, table in index.splits.items()
        },
    }


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Holds an exclusive ``flock`` on ``lock_path``: one process at a time, across hosts on NFS.

    The kernel releases the lock when its holder dies, however it dies, so a crashed builder never
    leaves the others waiting; the next one in takes over the build.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("waiting for another process to build %s", lock_path.with_suffix(""))
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def build_image_cache(index: DatasetIndex, image_size: int, cache_dir: str | Path, workers: int = 1) -> Path:
    """Builds the ArrayRecord dataset once and returns its directory (for :func:`load_split`).

    Reuses the directory when the fingerprint matches. A build decodes, resizes, serialises and
    compresses in ``workers`` processes (at most one per shard) and shows a progress bar with the
    images per second; the files do not depend on ``workers``. Safe to call from many processes at
    once, on one host or on hosts sharing ``cache_dir``: one builds while the others wait on a lock
    beside the dataset, then find it complete.
    """
    key = fingerprint(index, image_size)
    data_dir = Path(cache_dir) / f"{image_size}px-{key[:16]}"
    path = data_dir / DATASET_NAME / DATASET_VERSION
    tables = path / TABLES_FILE
    if tables.exists():  # written last: the dataset is complete
        return path
    with _exclusive(data_dir.with_name(data_dir.name + ".lock")):
        if not (path / "dataset_info.json").exists():  # another process may have built it meanwhile
            # Built beside and renamed into place, so a crash never leaves a half-written dataset.
            partial = data_dir.with_name(data_dir.name + ".incomplete")
            shutil.rmtree(partial, ignore_errors=True)  # a crashed build's leftovers
            _build(index, image_size, partial / DATASET_NAME / DATASET_VERSION, workers, data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)  # a dataset without its info is incomplete
            partial.rename(data_dir)
        if not tables.exists():
            # Written atomically, after the rename, so a later run only trusts a complete dataset.
            tmp = tables.with_suffix(".tmp")
            tmp.write_text(json.dumps(_tables_json(index, image_size, key)))
            tmp.replace(tables)
    return path


def _build(index: DatasetIndex, image_size: int, version_dir: Path, workers: int, destination: Path) -> None:
    """Writes the TFDS files of ``index`` into ``version_dir``, which must not exist yet, on the way to
    ``destination`` (the directory named in the log)."""
    version_dir.mkdir(parents=True)
    num_targets = len(index.target_names)
    template = tfds.core.ShardedFileTemplate(
        data_dir=version_dir, dataset_name=DATASET_NAME, filetype_suffix=FILE_FORMAT
    )
    shards, lengths = [], {}
    for split, table in index.splits.items():
        bounds = shard_bounds(len(table))
        lengths[split] = [stop - start for start, stop in bounds]
        split_template = template.replace(split=split)
        for number, (start, stop) in enumerate(bounds):
            file = split_template.sharded_filepath(shard_index=number, num_shards=len(bounds))
            shards.append(
                Shard(
                    file=os.fspath(file),
                    image_size=image_size,
                    paths=tuple(table.paths[start:stop]),
                    sample_ids=table.sample_ids[start:stop],
                    reservoir_ids=table.reservoir_ids[start:stop],
                    targets=table.targets[start:stop].reshape(stop - start, num_targets),
                    first_row=start,
                )
            )
    total = sum(len(table) for table in index.splits.values())
    workers = max(1, min(workers, len(shards)))
    log.info(
        "building the image cache (%d images at %d², %d worker%s): %s",
        total,
        image_size,
        workers,
        "s" if workers > 1 else "",
        destination,
    )
    start = time.perf_counter()
    with tqdm(total=total, desc="image cache", unit="img") as progress:
        sizes = iter(write_shards(shards, workers, progress))
    split_infos = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=shard_lengths,
            num_bytes=sum(next(sizes) for _ in shard_lengths),
            filename_template=template.replace(split=split),
        )
        for split, shard_lengths in lengths.items()
    ]
    tfds.folder_dataset.write_metadata(
        data_dir=version_dir,
        features=features(image_size, num_targets),
        split_infos=split_infos,
        version=DATASET_VERSION,
        filename_template=template,
        check_data=False,
        description="RockIR images materialised by rockir_jax.data.tfds_builder.",
        disable_shuffling=True,
    )
    log.info("image cache built: %.0f images/s", total / (time.perf_counter() - start))


def read_tables(path: str | Path) -> dict[str, Any]:
    """The vocabularies and per-split label arrays stored beside a prepared dataset."""
    return json.loads((Path(path) / TABLES_FILE).read_text())


def load_split(path: str | Path, split: str) -> SplitSource:
    """Random-access source of one split of a dataset written by :func:`build_image_cache`."""
    tables = read_tables(path)
    split_tables = tables["splits"][split]
    records = tfds.builder_from_directory(os.fspath(path)).as_data_source(split)
    return SplitSource(
        records=records,
        sample_ids=np.asarray(split_tables["sample_ids"], np.int32),
        reservoir_ids=np.asarray(split_tables["reservoir_ids"], np.int32),
        targets=np.asarray(split_tables["targets"], np.float32).reshape(
            len(split_tables["sample_ids"]), len(tables["target_names"])
        ),
        image_size=int(tables["image_size"]),
    )

"""Materialises a validated data set into TFDS ArrayRecord files, cached by source and image size.

:func:`prepare` decodes and resizes every image once and writes one TFDS split per data split with
features ``image`` uint8 ``(S, S, 3)`` (stored as raw bytes), ``sample_id`` int32, ``reservoir_id``
int32, ``targets`` float32 ``(T,)`` and ``index`` int32 (the row in the split's table). Decoding and
resizing run in ``workers`` processes, in order, so the files are the same for any worker count.
The dataset lives under::

    <cache_dir>/<S>px-<fingerprint>/rockir_images/1.0.0/

where the fingerprint hashes every image's path, size and modification time, the CSV's content,
the target definition and the image size: any change to the source or the size gives a new
directory (a rebuild), otherwise the existing one is reused. Beside the TFDS files,
``rockir_tables.json`` keeps the per-split label arrays and vocabularies, so readers need nothing
but this directory. Old directories are not deleted.

Reading (:func:`load_split`) goes through
``tfds.builder_from_directory(...).as_data_source(split)``; nothing here needs TensorFlow. The
builder class lives in this importable module because grain worker processes re-import it (a
builder defined in ``__main__`` fails there as "already registered").
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils
from tqdm.auto import tqdm

from rockir_jax.data.metadata import DatasetIndex
from rockir_jax.data.sources import SplitSource
from rockir_jax.images import read_image, read_images

# Bump when the stored layout, the image decoding or the CSV's interpretation changes, so old caches
# are not reused.
FORMAT_VERSION = 3
TABLES_FILE = "rockir_tables.json"
# Images per worker task: large enough to amortise the round trip between processes.
_CHUNK = 32

log = logging.getLogger(__name__)

Decoder = Callable[[Sequence[str]], Iterable[np.ndarray]]
"""Image paths -> their decoded, resized images, in order."""


class RockirImages(tfds.core.GeneratorBasedBuilder):
    """Decoded, resized rock images of a :class:`DatasetIndex`, one TFDS split per data split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "Decoded uint8 images, sample/reservoir ids, regression targets."
    }
    # Nothing is downloaded, so there are no URL checksums to look up. Looking them up goes through
    # `code_path`, which imports `importlib_resources`, a package TFDS 4.9.x only declares for
    # Python < 3.9 (tensorflow/datasets#11212).
    url_infos = None

    def __init__(self, *, index: DatasetIndex, image_size: int, **kwargs: Any):
        # _info() runs inside the base constructor, so these must exist first.
        self._index = index
        self._image_size = image_size
        self._decode: Decoder = lambda paths: (read_image(path, image_size) for path in paths)
        self._progress: tqdm | None = None
        super().__init__(file_format="array_record", **kwargs)

    def build(self, decode: Decoder, progress: tqdm) -> None:
        """Writes the dataset, images from ``decode``, one ``progress`` update per image."""
        self._decode, self._progress = decode, progress
        self.download_and_prepare()

    # TFDS prints a "Downloading and preparing dataset Unknown size…" line before a build and a
    # "downloaded and prepared" one after; prepare() says what happens in its own words.
    def _log_download_bytes(self) -> None:
        pass

    def _log_download_done(self) -> None:
        pass

    def _info(self) -> tfds.core.DatasetInfo:
        size = self._image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    # Raw bytes: the default encoding stores every pixel as an int64, and converting
                    # to that took ten times longer than decoding the PNG.
                    "image": tfds.features.Tensor(
                        shape=(size, size, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
                    ),
                    "sample_id": tfds.features.Scalar(dtype=np.int32),
                    "reservoir_id": tfds.features.Scalar(dtype=np.int32),
                    "targets": tfds.features.Tensor(shape=(len(self._index.target_names),), dtype=np.float32),
                    "index": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            description="RockIR images materialised by rockir_jax.data.tfds_builder.",
            # Record i must be row i of the split table: the pair sampler indexes both together.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # the source is local and already validated
        return {split: self._generate_examples(split) for split in self._index.splits}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        table = self._index.splits[split]
        for i, image in enumerate(self._decode(table.paths)):
            if self._progress is not None:
                self._progress.update()
            yield (
                i,
                {
                    "image": image,
                    "sample_id": table.sample_ids[i],
                    "reservoir_id": table.reservoir_ids[i],
                    "targets": table.targets[i],
                    "index": np.int32(i),
                },
            )


def _in_order(pool: Executor, workers: int, image_size: int, paths: Sequence[str]) -> Iterator[np.ndarray]:
    """``paths``' images in order, chunks decoded ahead in the pool; at most ``4 * workers`` chunks
    wait in memory, however far the writer falls behind."""
    pending: collections.deque = collections.deque()
    for start in range(0, len(paths), _CHUNK):
        pending.append(pool.submit(read_images, paths[start : start + _CHUNK], image_size))
        if len(pending) >= 4 * workers:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()


@contextlib.contextmanager
def _decoder(image_size: int, workers: int) -> Iterator[Decoder]:
    """Decodes in this process (``workers == 1``) or in a pool of ``workers`` processes."""
    if workers <= 1:
        yield lambda paths: (read_image(path, image_size) for path in paths)
        return
    # Not fork: the parent may run JAX's threads. The fork server preloads only rockir_jax.images
    # (numpy and Pillow); each worker still re-imports the parent's __main__ when it starts.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    if "forkserver" in methods:
        context.set_forkserver_preload([read_images.__module__])
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield lambda paths: _in_order(pool, workers, image_size, paths)


@contextlib.contextmanager
def _only_our_progress_bar() -> Iterator[None]:
    """Silences TFDS's bars (no totals, interleaved with ours), then restores the user's choice."""
    was_active = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(was_active)


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


def prepare(index: DatasetIndex, image_size: int, cache_dir: str | Path, workers: int = 1) -> Path:
    """Builds the ArrayRecord dataset once and returns its directory (for :func:`load_split`).

    Reuses the directory when the fingerprint matches. A build decodes and resizes in ``workers``
    processes (fewer for a small data set: each gets at least one chunk of images) and shows a
    progress bar with the images per second; the files do not depend on ``workers``. Safe to call
    from many processes at once, on one host or on hosts sharing ``cache_dir``: one builds while the
    others wait on a lock beside the dataset, then find it complete.
    """
    key = fingerprint(index, image_size)
    data_dir = Path(cache_dir) / f"{image_size}px-{key[:16]}"
    builder = RockirImages(index=index, image_size=image_size, data_dir=data_dir)
    path = Path(builder.data_dir)
    tables = path / TABLES_FILE
    if tables.exists():  # written last: the dataset is complete
        return path
    with _exclusive(data_dir.with_name(data_dir.name + ".lock")):
        if not builder.is_prepared():  # another process may have built it meanwhile
            _build(builder, index, image_size, workers)
        if not tables.exists():
            # Written after TFDS's atomic rename, and atomically itself, so a crash never leaves a
            # half-written table that a later run would trust.
            tmp = tables.with_suffix(".tmp")
            tmp.write_text(json.dumps(_tables_json(index, image_size, key)))
            tmp.replace(tables)
    return path


def _build(builder: RockirImages, index: DatasetIndex, image_size: int, workers: int) -> None:
    total = sum(len(table) for table in index.splits.values())
    workers = max(1, min(workers, math.ceil(total / _CHUNK)))
    log.info(
        "building the image cache (%d images at %d², %d worker%s): %s",
        total,
        image_size,
        workers,
        "s" if workers > 1 else "",
        builder.data_dir,
    )
    start = time.perf_counter()
    with (
        _only_our_progress_bar(),
        _decoder(image_size, workers) as decode,
        tqdm(total=total, desc="image cache", unit="img") as progress,
    ):
        builder.build(decode, progress)
    log.info("image cache built: %.0f images/s", total / (time.perf_counter() - start))


def read_tables(path: str | Path) -> dict[str, Any]:
    """The vocabularies and per-split label arrays stored beside a prepared dataset."""
    return json.loads((Path(path) / TABLES_FILE).read_text())


def load_split(path: str | Path, split: str) -> SplitSource:
    """Random-access source of one split of a dataset written by :func:`prepare`."""
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

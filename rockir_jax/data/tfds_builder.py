"""Materialises a validated data set into TFDS ArrayRecord files, cached by source and image size.

:func:`prepare` decodes and resizes every image once and writes one TFDS split per data split with
features ``image`` uint8 ``(S, S, 3)``, ``sample_id`` int32, ``reservoir_id`` int32, ``targets``
float32 ``(T,)`` and ``index`` int32 (the row in the split's table). The dataset lives under::

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

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils
from tqdm.auto import tqdm

from rockir_jax.data.metadata import DatasetIndex, read_image
from rockir_jax.data.sources import SplitSource

# Bump when the stored layout, the image decoding or the CSV's interpretation changes, so old caches
# are not reused.
FORMAT_VERSION = 2
TABLES_FILE = "rockir_tables.json"


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
        super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self._image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
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
        decode = lambda path: read_image(path, self._image_size)
        # Threads overlap PIL decoding (which releases the GIL) with TFDS serialisation.
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            images = pool.map(decode, table.paths)
            progress = tqdm(images, total=len(table), desc=f"Decoding {split} images", unit="img")
            for i, image in enumerate(progress):
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


def prepare(index: DatasetIndex, image_size: int, cache_dir: str | Path) -> Path:
    """Builds the ArrayRecord dataset once and returns its directory (for :func:`load_split`).

    Reuses the directory when the fingerprint matches; shows a progress bar while building.
    """
    key = fingerprint(index, image_size)
    builder = RockirImages(
        index=index, image_size=image_size, data_dir=Path(cache_dir) / f"{image_size}px-{key[:16]}"
    )
    with _only_our_progress_bar():
        builder.download_and_prepare()  # no-op when the versioned directory is complete
    path = Path(builder.data_dir)
    tables = path / TABLES_FILE
    if not tables.exists():
        # Written after TFDS's atomic rename, and atomically itself, so a crash never leaves a
        # half-written table that a later run would trust.
        tmp = tables.with_suffix(".tmp")
        tmp.write_text(json.dumps(_tables_json(index, image_size, key)))
        tmp.replace(tables)
    return path


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

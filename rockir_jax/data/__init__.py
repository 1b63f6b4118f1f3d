"""Rock image data: files + metadata CSV -> validated index -> TFDS ArrayRecord -> grain batches.

Typical use (the trainer)::

    from rockir_jax import data

    index = data.index_dataset(root, metadata_csv)       # raises DataValidationError, listing all
    path = data.build_image_cache(index, image_size, cache_dir)    # builds once per source + size
    train = data.train_iterator(data.load_split(path, "train"), global_batch_size=64, seed=0)

Modules: :mod:`~rockir_jax.data.layout` (folder layout, file naming), :mod:`~rockir_jax.data.metadata`
(CSV schema, targets, validation), :mod:`~rockir_jax.data.database` (database folders to search),
:mod:`~rockir_jax.data.tfds_builder` (ArrayRecord cache), :mod:`~rockir_jax.data.sources` (random-access
split views), :mod:`~rockir_jax.data.pipeline` (grain pairs and evaluation batches),
:mod:`~rockir_jax.data.writer` (writing a data set), :mod:`~rockir_jax.data.inspect` (summary and contact
sheet).
"""

from rockir_jax.data.metadata import (
    DatasetIndex,
    DataValidationError,
    SplitTable,
    TargetSpec,
    compute_targets,
    index_dataset,
    limit_samples_per_reservoir,
    same_metadata,
    targets_to_physical,
)
from rockir_jax.data.pipeline import (
    eval_iterator,
    steps_per_epoch,
    train_iterator,
)
from rockir_jax.data.sources import SplitSource, from_index
from rockir_jax.data.tfds_builder import build_image_cache, load_split, read_tables
from rockir_jax.images import read_image

__all__ = [
    "DataValidationError",
    "DatasetIndex",
    "SplitSource",
    "SplitTable",
    "TargetSpec",
    "build_image_cache",
    "compute_targets",
    "eval_iterator",
    "from_index",
    "index_dataset",
    "limit_samples_per_reservoir",
    "load_split",
    "read_image",
    "read_tables",
    "same_metadata",
    "steps_per_epoch",
    "targets_to_physical",
    "train_iterator",
]

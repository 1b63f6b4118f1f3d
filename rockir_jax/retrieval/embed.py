"""Embedding whole image sets with a model, sharded over devices, and validation of a model.

Embeddings come from the model's ``embed`` method (DSNN: ``(normalize(f_img) + normalize(f_rock)) / 2``
and the regression prediction; Siamese and Vanilla: normalised pooled features), optionally averaged
over an image's 8 orientations (test-time augmentation: a slice's rock does not depend on how it lies).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from rockir_jax import runtime
from rockir_jax.data.metadata import TargetSpec, targets_to_physical
from rockir_jax.data.pipeline import eval_iterator
from rockir_jax.data.sources import SplitSource
from rockir_jax.retrieval.knn import knn
from rockir_jax.retrieval.metrics import (
    LEVELS,
    PER_SAMPLE,
    flat_metrics,
    metadata_metrics,
    per_sample_metadata_metrics,
    retrieval_metrics,
    sample_means,
)
from rockir_jax.sharding import DATA_AXIS, shard_batch

EmbedStep = Callable[[Mapping[str, Any], jax.Array], dict[str, jax.Array]]

ORIENTATIONS = (1, 8)
"""Test-time orientations: the image as it is, or the mean over its 8 (the dihedral group of the square)."""


def dihedral_views(images: jax.Array) -> jax.Array:
    """``(8, N, H, W, C)``: ``images`` ``(N, H, W, C)`` as they are, flipped left-right, up-down and both,
    then the same four of the transposed images (every rotation and reflection of a square)."""
    views = []
    for image in (images, jnp.swapaxes(images, 1, 2)):
        for vertical in (False, True):
            flipped = image[:, ::-1] if vertical else image
            views += [flipped, flipped[:, :, ::-1]]
    return jnp.stack(views)


def make_embed_step(mesh: Mesh, model: nn.Module, orientations: int = 1) -> EmbedStep:
    """``embed_step(variables, images) -> model.embed(images)``, images and outputs split on ``data``.

    With ``orientations=8`` every output is the mean of ``model.embed`` over :func:`dihedral_views`,
    computed one orientation at a time (the memory of one batch).
    """
    if orientations not in ORIENTATIONS:
        raise ValueError(f"orientations must be one of {ORIENTATIONS}, got {orientations}")

    def per_device(variables, images):
        embed = lambda views: model.apply(variables, views, method=model.embed)
        if orientations == 1:
            return embed(images)
        return jax.tree.map(lambda v: v.mean(axis=0), jax.lax.map(embed, dihedral_views(images)))

    sharded = jax.shard_map(
        per_device, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(DATA_AXIS), check_vma=False
    )
    return jax.jit(sharded)


def embed_source(
    embed_step: EmbedStep,
    variables: Mapping[str, Any],
    source: SplitSource,
    mesh: jax.sharding.Mesh,
    batch_size: int,
    progress: str | None = None,
) -> dict[str, np.ndarray]:
    """Runs ``embed_step`` (:func:`make_embed_step`) over every image of ``source``.

    Returns ``embedding`` ``(N, D)``, ``reg`` ``(N, T)`` when the model predicts metadata, and the
    split's ``sample_id``, ``reservoir_id``, ``targets`` and ``index``, in the split's order. Run
    by several processes, each embeds its share of every batch and all return the whole result.
    """
    parts: list[dict[str, np.ndarray]] = []
    runtime.wait_for_all_processes("embed")
    batches = eval_iterator(source, global_batch_size=batch_size)
    total = -(-len(source) // batch_size)
    hidden = progress is None or jax.process_index() > 0
    for batch in tqdm(batches, total=total, desc=progress, disable=hidden, leave=False):
        outputs = embed_step(variables, shard_batch({"image": batch.pop("image")}, mesh)["image"])
        local = {key: value for key, value in batch.items()}
        gathered = multihost_utils.process_allgather(local, tiled=True)
        outputs = multihost_utils.process_allgather(outputs, tiled=True)
        keep = np.asarray(gathered.pop("mask"))
        parts.append({k: np.asarray(v)[keep] for k, v in {**gathered, **outputs}.items()})
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def physical_metadata(targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(porosity, permeability relative to ``Pixelsize**2``) of targets in the default scaling.

    Both true and predicted values share the pixel size of their image, so comparisons of log10
    permeability need no pixel size.
    """
    return targets_to_physical(targets, 1.0, TargetSpec())


def validation_metrics(
    queries: Mapping[str, np.ndarray],
    database: Mapping[str, np.ndarray],
    query_offset: int,
    k: int = 10,
    levels: Sequence[str] = LEVELS,
) -> dict[str, float]:
    """Retrieval metrics of ``queries`` against ``database`` (which contains them, from row
    ``query_offset`` on; each query is excluded from its own ranking) at each relevance level (labels
    under ``<level>_id``) and, for models that predict metadata, the queries' porosity and
    permeability errors. Flat ``{"sample/map@10": …}``; also per sample (:data:`PER_SAMPLE`):
    reservoir retrieval among sample means and the error of each sample's mean prediction."""
    query_rows = query_offset + np.arange(len(queries["embedding"]))
    # The full ranking, so that mAP over all relevant items is exact.
    full = len(database["embedding"]) - 1
    _, ranked = knn(queries["embedding"], database["embedding"], full, exclude_indices=query_rows)
    per_level = retrieval_metrics(
        ranked,
        {level: queries[f"{level}_id"] for level in levels},
        {level: database[f"{level}_id"] for level in levels},
        k,
        # Self is already out of the ranking; naming it keeps it out of each query's relevant count.
        query_ids=query_rows,
    )
    flat = {key: v for level, values in per_level.items() for key, v in flat_metrics(level, values).items()}
    if "reservoir_id" in queries:
        flat |= per_sample_retrieval(queries, database, k)
    if "reg" in queries:
        true_porosity, true_permeability = physical_metadata(queries["targets"])
        pred_porosity, pred_permeability = physical_metadata(queries["reg"])
        errors = metadata_metrics(true_porosity, pred_porosity, true_permeability, pred_permeability)
        flat |= flat_metrics("metadata", errors)
        errors = per_sample_metadata_metrics(
            queries["sample_id"], true_porosity, pred_porosity, true_permeability, pred_permeability
        )
        flat |= flat_metrics(f"metadata{PER_SAMPLE}", errors)
    return flat


def per_sample_retrieval(
    queries: Mapping[str, np.ndarray], database: Mapping[str, np.ndarray], k: int = 10
) -> dict[str, float]:
    """Reservoir retrieval among samples: each query sample's mean embedding (over its query rows)
    against every other sample's (over its database rows), flat ``{"reservoir_per_sample/map@10": …}``
    with k capped at the other samples' count; empty with fewer than 2 database samples."""

    def means(rows: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        samples, embeddings = sample_means(rows["sample_id"], rows["embedding"])
        first = np.unique(np.asarray(rows["sample_id"]), return_index=True)[1]
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        unit = (embeddings / np.maximum(norms, 1e-12)).astype(np.float32)
        return samples, unit, rows["reservoir_id"][first]

    query_samples, query_embeddings, query_reservoirs = means(queries)
    db_samples, db_embeddings, db_reservoirs = means(database)
    if len(db_samples) < 2:
        return {}
    _, ranked = knn(query_embeddings, db_embeddings, len(db_samples))
    k = min(k, len(db_samples) - 1)
    per_level = retrieval_metrics(
        ranked,
        {"reservoir": query_reservoirs},
        {"reservoir": db_reservoirs},
        k,
        query_ids=query_samples,
        database_ids=db_samples,
    )
    return flat_metrics(f"reservoir{PER_SAMPLE}", per_level["reservoir"])

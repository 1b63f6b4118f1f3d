"""Retrieval: exact sharded k-NN search, ranking and metadata metrics, saved indexes and figures.

Data flow: embeddings → :func:`knn` / :class:`KnnIndex` → :func:`retrieval_metrics` and
:func:`metadata_metrics` → :func:`retrieval_figure`; a :class:`RetrievalIndex` saved with
:func:`save_index` lets a query skip re-embedding the database.
"""

from rockir_jax.retrieval.figures import Query, query_from_index, retrieval_figure, select_hits
from rockir_jax.retrieval.index import RetrievalIndex, load_index, save_index
from rockir_jax.retrieval.knn import KnnIndex, knn
from rockir_jax.retrieval.metrics import (
    average_precision,
    average_precision_at_k,
    average_precision_at_k_original,
    hit_rate_at_k,
    mae,
    metadata_metrics,
    precision_at_k,
    r2_score,
    recall_at_k,
    retrieval_metrics,
    rmse,
)

__all__ = [
    "KnnIndex",
    "Query",
    "RetrievalIndex",
    "average_precision",
    "average_precision_at_k",
    "average_precision_at_k_original",
    "hit_rate_at_k",
    "knn",
    "load_index",
    "mae",
    "metadata_metrics",
    "precision_at_k",
    "query_from_index",
    "r2_score",
    "recall_at_k",
    "retrieval_figure",
    "retrieval_metrics",
    "rmse",
    "save_index",
    "select_hits",
]

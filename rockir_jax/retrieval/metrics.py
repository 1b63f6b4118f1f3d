"""Retrieval and metadata metrics, in float64 numpy.

Ranking metrics take ``relevant`` (Q, M: whether the item at each rank is relevant to each query) and
``n_relevant`` (Q,: the number |R| of relevant items in the database; the row sums by default, right only
for full rankings) and give precision@k, AP@k (standard, and the original RockIR's), AP, hit rate@k (the
paper's "recall@k") and recall@k. Queries with |R| = 0 get NaN and :func:`retrieval_metrics` leaves them
out of its means. Definitions: docs/internals.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

LEVELS = ("sample", "reservoir")
"""Relevance levels: a hit is relevant when it shows the query's sample, or its reservoir."""

PREFIX_LEVEL = "prefix2"
"""The original evaluation script's relevance level: the same first two characters of the file stem."""


def prefix_labels(paths: ArrayLike, length: int = 2) -> np.ndarray:
    """The :data:`PREFIX_LEVEL` labels of image paths: ``Path(path).stem[:length]``."""
    return np.array([Path(str(p)).stem[:length] for p in np.asarray(paths).tolist()], dtype=str)


RANKING_METRICS = {
    "map@{k}": ("mAP@{k}", r"mAP@{k} (AP / min(\|R\|, k))"),
    "map": ("mAP", "mAP (full ranking)"),
    "precision@{k}": ("P@{k}", "precision@{k}"),
    "recall@{k}": ("recall@{k}", r"recall@{k} (fraction of \|R\| in top {k})"),
    "hit_rate@{k}": ("hit@{k}", "hit rate@{k} (≥ 1 relevant in top {k}; the paper's recall@k)"),
    "map@{k}_original": (
        "AP@{k} original",
        "AP@{k}, original RockIR (first k hits anywhere in the ranking, itself at rank 1; divides by k)",
    ),
}
"""Every ranking metric's name (``{k}`` the cut-off) → (short label for tables, description)."""

METADATA_METRICS = {
    "porosity_mae": "porosity MAE",
    "porosity_r2": "porosity R²",
    "log10_permeability_rmse": "log10 k RMSE",
    "log10_permeability_r2": "log10 k R²",
}
"""Every metadata metric's name → label."""

PER_SAMPLE = "_per_sample"
"""Suffix of the levels measured per sample rather than per slice: ``reservoir_per_sample`` ranks each
sample's mean embedding against the other samples'; ``metadata_per_sample`` scores the mean of a sample's
slice predictions (users hold many slices of one rock)."""

TABLE_COLUMNS = (
    ("sample", "map@{k}"),
    ("reservoir", "map@{k}"),
    ("reservoir", "map"),
    (f"reservoir{PER_SAMPLE}", "map@{k}"),
    ("metadata", "porosity_mae"),
    ("metadata", "porosity_r2"),
    (f"metadata{PER_SAMPLE}", "porosity_r2"),
    ("metadata", "log10_permeability_rmse"),
    ("metadata", "log10_permeability_r2"),
    (f"metadata{PER_SAMPLE}", "log10_permeability_r2"),
)
"""The headline metrics of comparison tables, (level, name): names from :data:`RANKING_METRICS` and
:data:`METADATA_METRICS`."""

BEST_CHECKPOINT_METRIC = ("reservoir", "map@{k}")
"""The validation metric that picks a run's best checkpoint: reservoir mAP@k."""


def metric_key(level: str, name: str, k: int) -> str:
    """The flat key of a metric, as in reports and logs: ``metric_key("reservoir", "map@{k}", 10)`` is
    ``"reservoir/map@10"``; metadata metrics take the level ``"metadata"``."""
    return f"{level}/{name.format(k=k)}"


def flat_metrics(level: str, values: Mapping[str, float | int]) -> dict[str, float]:
    """``values`` of one level as flat keys (``"metadata/porosity_mae"``), counts (``n_…``) left out."""
    return {f"{level}/{name}": float(v) for name, v in values.items() if not name.startswith("n_")}


def best_checkpoint_metric(k: int) -> str:
    """The key of :data:`BEST_CHECKPOINT_METRIC` at cut-off ``k``."""
    return metric_key(*BEST_CHECKPOINT_METRIC, k)


def metric_label(key: str, k: int) -> str:
    """A short human label of a flat metric key: ``"reservoir/map@10"`` → ``"reservoir mAP@10"``."""
    level, name = key.split("/", 1)
    base = level.removesuffix(PER_SAMPLE)
    suffix = " per sample" if base != level else ""
    if base == "metadata":
        return METADATA_METRICS[name] + suffix
    for template, (label, _) in RANKING_METRICS.items():
        # The name's own cut-off: per-sample levels cap k at the number of other samples.
        match = re.fullmatch(re.escape(template).replace(r"\{k\}", r"(\d+)"), name)
        if match:
            return f"{base} {label.format(k=match.group(1) if match.groups() else k)}{suffix}"
    raise KeyError(f"unknown metric {key!r}")


def _relevance(relevant: ArrayLike, k: int | None = None) -> np.ndarray:
    rel = np.asarray(relevant, dtype=bool)
    if rel.ndim != 2:
        raise ValueError(f"relevant must be (queries, ranks), got shape {rel.shape}")
    if k is not None and not 1 <= k <= rel.shape[1]:
        raise ValueError(f"k={k} must be between 1 and the ranking length {rel.shape[1]}")
    return rel


def _n_relevant(rel: np.ndarray, n_relevant: ArrayLike | None) -> np.ndarray:
    if n_relevant is None:
        return rel.sum(axis=1).astype(np.float64)
    n = np.asarray(n_relevant, dtype=np.float64)
    if n.shape != (rel.shape[0],):
        raise ValueError(f"n_relevant must have shape ({rel.shape[0]},), got {n.shape}")
    return n


def _precision_sum(rel: np.ndarray) -> np.ndarray:
    """Σ_i P@i · rel_i over the given ranks."""
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    return np.sum(np.cumsum(rel, axis=1) / ranks * rel, axis=1)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def precision_at_k(relevant: ArrayLike, k: int) -> np.ndarray:
    """(Q,) fraction of the top k that is relevant."""
    rel = _relevance(relevant, k)
    return rel[:, :k].sum(axis=1) / float(k)


def average_precision_at_k(relevant: ArrayLike, k: int, n_relevant: ArrayLike | None = None) -> np.ndarray:
    """(Q,) standard AP@k, normalised by ``min(|R|, k)``; NaN where |R| = 0."""
    rel = _relevance(relevant, k)
    n = _n_relevant(rel, n_relevant)
    return _divide(_precision_sum(rel[:, :k]), np.minimum(n, k))


def average_precision_at_k_original(relevant: ArrayLike, k: int) -> np.ndarray:
    """(Q,) the original RockIR's ``ap_k``: the precisions at the first ``k`` relevant items, wherever
    they fall in the given ranking, summed and divided by k (0 where nothing relevant is retrieved).
    Pass the full ranking; ``k`` may exceed its length."""
    rel = _relevance(relevant)
    if k < 1:
        raise ValueError(f"k={k} must be at least 1")
    hits = np.cumsum(rel, axis=1)
    ranks = np.arange(1, rel.shape[1] + 1, dtype=np.float64)
    return np.sum(np.where(rel & (hits <= k), hits / ranks, 0.0), axis=1) / float(k)


def average_precision(relevant: ArrayLike, n_relevant: ArrayLike | None = None) -> np.ndarray:
    """(Q,) AP over the whole given ranking, normalised by |R|; NaN where |R| = 0."""
    rel = _relevance(relevant)
    return _divide(_precision_sum(rel), _n_relevant(rel, n_relevant))


def hit_rate_at_k(relevant: ArrayLike, k: int) -> np.ndarray:
    """(Q,) 1.0 where at least one of the top k is relevant, else 0.0 (the paper's "recall@k")."""
    rel = _relevance(relevant, k)
    return rel[:, :k].any(axis=1).astype(np.float64)


def recall_at_k(relevant: ArrayLike, k: int, n_relevant: ArrayLike | None = None) -> np.ndarray:
    """(Q,) fraction of the |R| relevant items found in the top k; NaN where |R| = 0."""
    rel = _relevance(relevant, k)
    return _divide(rel[:, :k].sum(axis=1).astype(np.float64), _n_relevant(rel, n_relevant))


def _without_self(
    ranked: np.ndarray, query_ids: np.ndarray, database_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rankings with each query's own entry removed (later ranks move up) and a validity mask."""
    is_self = database_ids[ranked] == query_ids[:, None]
    # A stable sort on "is self" keeps the order of the other entries and moves self to the end.
    order = np.argsort(is_self, axis=1, kind="stable")
    return np.take_along_axis(ranked, order, axis=1), ~np.take_along_axis(is_self, order, axis=1)


def _label_counts(query_labels: np.ndarray, database_labels: np.ndarray) -> np.ndarray:
    """(Q,) how many database rows carry each query's label."""
    values, counts = np.unique(database_labels, return_counts=True)
    pos = np.minimum(np.searchsorted(values, query_labels), len(values) - 1)
    return np.where(values[pos] == query_labels, counts[pos], 0)


def retrieval_metrics(
    ranked_indices: ArrayLike,
    query_labels: Mapping[str, ArrayLike],
    database_labels: Mapping[str, ArrayLike],
    k: int = 10,
    *,
    exclude_self: bool = True,
    query_ids: ArrayLike | None = None,
    database_ids: ArrayLike | None = None,
) -> dict[str, dict[str, float | int]]:
    """Mean ranking metrics per relevance level.

    Args:
        ranked_indices: (Q, M) database rows per query, best first: the full ranking (M = N) for an
            exact mAP, or a truncated one (AP then counts unreached relevant items as missed).
        query_labels: level name → (Q,) labels of the queries, e.g.
            ``{"sample": ..., "reservoir": ...}``; an item is relevant at a level when its label
            equals the query's.
        database_labels: the same levels → (N,) labels of the database rows.
        k: cut-off of the @k metrics.
        exclude_self: drop each query's own entry from its ranking and from its relevant set.
        query_ids, database_ids: identities used to find "self" (e.g. image paths); by default the
            queries are the database rows 0…Q-1, i.e. ``query_ids = arange(Q)``, ``database_ids =
            arange(N)``.

    Returns:
        level → ``{"map@k", "map@k_original", "map", "precision@k", "hit_rate@k", "recall@k",
        "n_queries", "n_queries_without_relevant"}`` (with the number in place of k). Means are
        over the queries that have at least one relevant item; ``hit_rate@k`` is the paper's
        recall@k (≥ 1 relevant in the top k) and ``recall@k`` the fraction of relevant items
        retrieved. ``map@k_original`` is computed as the original did, on its ranking of the whole
        database: a query that is a database row is put back at rank 1 (its distance to itself is
        0), so that ranking holds one more relevant item.
    """
    ranked = np.asarray(ranked_indices)
    if ranked.ndim != 2:
        raise ValueError(f"ranked_indices must be (queries, ranks), got shape {ranked.shape}")
    n_queries = ranked.shape[0]
    if set(query_labels) != set(database_labels):
        raise ValueError(
            f"query and database label levels differ: {sorted(query_labels)} vs {sorted(database_labels)}"
        )
    n_db = len(next(iter(database_labels.values())))
    valid = np.ones(ranked.shape, dtype=bool)
    self_row = np.full(n_queries, -1)
    if exclude_self:
        q_ids = np.arange(n_queries) if query_ids is None else np.asarray(query_ids)
        db_ids = np.arange(n_db) if database_ids is None else np.asarray(database_ids)
        ranked, valid = _without_self(ranked, q_ids, db_ids)
        row_of = {item: row for row, item in enumerate(db_ids.tolist())}
        self_row = np.array([row_of.get(item, -1) for item in q_ids.tolist()], dtype=np.int64)
    length = int(valid.sum(axis=1).min())
    if not 1 <= k <= length:
        raise ValueError(f"k={k} must be between 1 and the ranking length {length} (self excluded)")

    results: dict[str, dict[str, float | int]] = {}
    for level, q_lab in query_labels.items():
        q_lab = np.asarray(q_lab)
        db_lab = np.asarray(database_labels[level])
        if q_lab.shape != (n_queries,) or db_lab.shape != (n_db,):
            raise ValueError(f"level {level!r}: labels must be ({n_queries},) and ({n_db},)")
        relevant = (db_lab[ranked] == q_lab[:, None]) & valid
        in_db = self_row >= 0
        self_relevant = in_db & (db_lab[np.where(in_db, self_row, 0)] == q_lab)
        n_rel = _label_counts(q_lab, db_lab) - self_relevant
        has = n_rel > 0
        # The original's ranking: self at rank 1 for a query in the database (padding keeps one shape).
        original_ranking = np.where(
            in_db[:, None],
            np.concatenate([self_relevant[:, None], relevant], axis=1),
            np.concatenate([relevant, np.zeros_like(relevant[:, :1])], axis=1),
        )
        per_query = {
            f"map@{k}": average_precision_at_k(relevant, k, n_rel),
            f"map@{k}_original": average_precision_at_k_original(original_ranking, k),
            "map": average_precision(relevant, n_rel),
            f"precision@{k}": precision_at_k(relevant, k),
            f"hit_rate@{k}": hit_rate_at_k(relevant, k),
            f"recall@{k}": recall_at_k(relevant, k, n_rel),
        }
        level_result: dict[str, float | int] = {
            name: float(np.mean(values[has])) if has.any() else float("nan")
            for name, values in per_query.items()
        }
        level_result["n_queries"] = int(has.sum())
        level_result["n_queries_without_relevant"] = int((~has).sum())
        results[level] = level_result
    return results


def _paired(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in size: {t.size} vs {p.size}")
    return t, p


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error ``mean |y - ŷ|``."""
    t, p = _paired(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared error ``sqrt(mean (y - ŷ)²)``."""
    t, p = _paired(y_true, y_pred)
    return float(np.sqrt(np.mean(np.square(t - p))))


def r2_score(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Coefficient of determination ``1 - Σ(y - ŷ)² / Σ(y - ȳ)²`` (NaN when y is constant)."""
    t, p = _paired(y_true, y_pred)
    total = np.sum(np.square(t - t.mean()))
    return float(1.0 - np.sum(np.square(t - p)) / total) if total > 0 else float("nan")


def metadata_metrics(
    true_porosity: ArrayLike,
    pred_porosity: ArrayLike,
    true_permeability: ArrayLike,
    pred_permeability: ArrayLike,
) -> dict[str, float | int]:
    """Porosity MAE and log10-permeability RMSE and R² over the items whose truth is known.

    Permeabilities are physical (any one unit for both); their log10 is taken here, so they must be
    positive. Items with a NaN true value (unknown metadata) are left out, per quantity.

    Returns:
        ``{"porosity_mae", "porosity_r2", "log10_permeability_rmse", "log10_permeability_r2",
        "n_porosity", "n_permeability"}``; NaN metrics when no truth is known.
    """
    t_por, p_por = _paired(true_porosity, pred_porosity)
    t_perm, p_perm = _paired(true_permeability, pred_permeability)
    known_por = np.isfinite(t_por)
    known_perm = np.isfinite(t_perm)
    if np.any(t_perm[known_perm] <= 0) or np.any(~(p_perm[known_perm] > 0)):
        raise ValueError("permeabilities must be positive to take their log10")
    log_t, log_p = np.log10(t_perm[known_perm]), np.log10(p_perm[known_perm])
    nan = float("nan")
    return {
        "porosity_mae": mae(t_por[known_por], p_por[known_por]) if known_por.any() else nan,
        "porosity_r2": r2_score(t_por[known_por], p_por[known_por]) if known_por.any() else nan,
        "log10_permeability_rmse": rmse(log_t, log_p) if known_perm.any() else nan,
        "log10_permeability_r2": r2_score(log_t, log_p) if known_perm.any() else nan,
        "n_porosity": int(known_por.sum()),
        "n_permeability": int(known_perm.sum()),
    }


def sample_means(samples: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``samples`` (sorted) and the mean of ``values`` (N, …) over each one's rows."""
    labels, inverse = np.unique(np.asarray(samples), return_inverse=True)
    values = np.asarray(values, dtype=np.float64)
    sums = np.zeros((len(labels), *values.shape[1:]))
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=len(labels)).reshape(-1, *[1] * (values.ndim - 1))
    return labels, sums / counts


def per_sample_metadata_metrics(
    samples: ArrayLike,
    true_porosity: ArrayLike,
    pred_porosity: ArrayLike,
    true_permeability: ArrayLike,
    pred_permeability: ArrayLike,
) -> dict[str, float | int]:
    """:func:`metadata_metrics` of each sample's mean prediction: porosity averaged over its slices,
    permeability averaged in log10 (the geometric mean). Slices with unknown truth are left out."""
    known = np.isfinite(np.asarray(true_porosity, np.float64)) & np.isfinite(
        np.asarray(true_permeability, np.float64)
    )
    columns = np.stack(
        [
            np.asarray(true_porosity, np.float64)[known],
            np.asarray(pred_porosity, np.float64)[known],
            np.log10(np.asarray(true_permeability, np.float64)[known]),
            np.log10(np.asarray(pred_permeability, np.float64)[known]),
        ],
        axis=1,
    )
    _, means = sample_means(np.asarray(samples)[known], columns)
    return metadata_metrics(means[:, 0], means[:, 1], 10 ** means[:, 2], 10 ** means[:, 3])

"""Retrieval and metadata metrics on hand-made rankings, expected values worked out by hand."""

import math

import numpy as np
import pytest

from rockir_jax.retrieval import (
    average_precision,
    average_precision_at_k,
    average_precision_at_k_original,
    hit_rate_at_k,
    metadata_metrics,
    precision_at_k,
    recall_at_k,
    retrieval_metrics,
)
from rockir_jax.retrieval.embed import per_sample_retrieval
from rockir_jax.retrieval.metrics import metric_label, per_sample_metadata_metrics

# Six database images; the queries are rows 0, 3 and 2 of the same database.
SAMPLES = np.array(["A1", "A1", "A2", "B1", "B1", "A1"])
RESERVOIRS = np.array(["A", "A", "A", "B", "B", "A"])
QUERY_ROWS = np.array([0, 3, 2])
# Full rankings, each starting with the query itself (as a search over the whole database returns).
RANKED = np.array(
    [
        [0, 3, 1, 2, 5, 4],  # without self: 3 1 2 5 4
        [4, 3, 0, 1, 2, 5],  # without self: 4 0 1 2 5 (self at rank 2, not first)
        [2, 0, 1, 5, 3, 4],  # without self: 0 1 5 3 4
    ]
)


def test_per_query_functions_on_one_row():
    # Ranks 1..5 relevance 0 1 0 1 0, |R| = 2: P@2 = 1/2, P@4 = 2/4.
    rel = np.array([[False, True, False, True, False]])
    assert precision_at_k(rel, 3) == pytest.approx([1 / 3])
    assert average_precision_at_k(rel, 3) == pytest.approx([(1 / 2) / 2])  # / min(|R|=2, k=3)
    # The original: both hits count wherever they fall (rank 4 > k), divided by k.
    assert average_precision_at_k_original(rel, 3) == pytest.approx([(1 / 2 + 2 / 4) / 3])
    assert average_precision(rel) == pytest.approx([(1 / 2 + 2 / 4) / 2])
    assert hit_rate_at_k(rel, 1) == pytest.approx([0.0])
    assert hit_rate_at_k(rel, 2) == pytest.approx([1.0])
    assert recall_at_k(rel, 3) == pytest.approx([1 / 2])


def test_divide_by_k_differs_when_fewer_relevant_than_k():
    # One relevant item, found first: standard AP@5 = 1, the original's = 1/5.
    rel = np.array([[True, False, False, False, False]])
    assert average_precision_at_k(rel, 5) == pytest.approx([1.0])
    assert average_precision_at_k_original(rel, 5) == pytest.approx([0.2])


def original_ap_k(actual, predicted, k):
    """The original RockIR's ``ap_k``, transcribed from its cbir_rock18_gated_qualitative_analysis.py."""
    relevant_counter = 0
    precisions = np.zeros(k)
    for i in range(len(predicted)):
        if relevant_counter < k:
            if predicted[i] == actual:
                relevant_counter += 1
                precisions[relevant_counter - 1] = float(relevant_counter) / (i + 1)
    return np.mean(precisions)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_original_ap_k_equals_the_originals_function_on_full_rankings(k):
    rng = np.random.default_rng(k)
    labels = rng.choice(list("ABC"), size=(200, 30), p=[0.15, 0.35, 0.5])
    actual = rng.choice(list("ABC"), size=200)
    expected = [original_ap_k(a, row, k) for a, row in zip(actual, labels, strict=True)]
    actual_ap = average_precision_at_k_original(labels == actual[:, None], k)
    np.testing.assert_allclose(actual_ap, expected, rtol=1e-12, atol=1e-12)


def test_truncated_ranking_uses_given_relevant_count_and_no_relevant_is_nan():
    # Top 3 of a longer ranking: 1 1 0, but |R| = 4 in the database.
    rel = np.array([[True, True, False], [False, False, False]])
    n_rel = np.array([4, 0])
    ap3 = average_precision_at_k(rel, 3, n_rel)
    assert ap3[0] == pytest.approx((1 + 1) / 3)  # / min(4, 3)
    assert math.isnan(ap3[1])
    ap = average_precision(rel, n_rel)
    assert ap[0] == pytest.approx((1 + 1) / 4)  # unreached relevant items count as missed
    assert math.isnan(ap[1])
    assert recall_at_k(rel, 3, n_rel)[0] == pytest.approx(2 / 4)
    with pytest.raises(ValueError, match="k=4"):
        precision_at_k(rel, 4)


def test_retrieval_metrics_excludes_self_per_level():
    labels = {"sample": SAMPLES, "reservoir": RESERVOIRS}
    query_labels = {name: values[QUERY_ROWS] for name, values in labels.items()}
    out = retrieval_metrics(
        RANKED, query_labels, labels, k=3, query_ids=QUERY_ROWS, database_ids=np.arange(6)
    )
    sample, reservoir = out["sample"], out["reservoir"]
    # Sample level. q0 (A1): rel 0 1 0 1 0, |R| = 2 (rows 1, 5). q3 (B1): rel 1 0 0 0 0, |R| = 1.
    # q2 (A2) has no other image of its sample: left out of the means.
    #   AP@3: q0 = (1/2) / 2 = 1/4, q3 = 1 / 1 = 1 → 5/8
    #   AP@3 original, self back at rank 1: q0 = rel 1 0 1 0 1 0 → (1 + 2/3 + 3/5) / 3 = 34/45,
    #   q3 = rel 1 1 0 0 0 0 → 2/3 → 32/45
    #   AP: q0 = (1/2 + 2/4) / 2 = 1/2, q3 = 1 → 3/4
    #   P@3: 1/3 and 1/3; hit rate: 1 and 1; recall@3: 1/2 and 1 → 3/4
    assert sample["map@3"] == pytest.approx(5 / 8)
    assert sample["map@3_original"] == pytest.approx(32 / 45)
    assert sample["map"] == pytest.approx(3 / 4)
    assert sample["precision@3"] == pytest.approx(1 / 3)
    assert sample["hit_rate@3"] == pytest.approx(1.0)
    assert sample["recall@3"] == pytest.approx(3 / 4)
    assert (sample["n_queries"], sample["n_queries_without_relevant"]) == (2, 1)
    # Reservoir level. q0 (A): rel 0 1 1 1 0, |R| = 3. q3 (B): rel 1 0 0 0 0, |R| = 1.
    # q2 (A): rel 1 1 1 0 0, |R| = 3.
    #   AP@3: q0 = (1/2 + 2/3) / 3 = 7/18, q3 = 1, q2 = 3/3 = 1 → (7/18 + 2) / 3 = 43/54
    #   AP@3 original, self at rank 1: q0 = rel 1 0 1 1 1 0 → (1 + 2/3 + 3/4) / 3 = 29/36,
    #   q3 = 2/3, q2 = rel 1 1 1 1 0 0 → 1 → (29 + 24 + 36) / 108 = 89/108
    #   AP: q0 = (1/2 + 2/3 + 3/4) / 3 = 23/36, q3 = 1, q2 = 1 → (23/36 + 2) / 3 = 95/108
    #   P@3: 2/3, 1/3, 1 → 2/3; recall@3: 2/3, 1, 1 → 8/9
    assert reservoir["map@3"] == pytest.approx(43 / 54)
    assert reservoir["map@3_original"] == pytest.approx(89 / 108)
    assert reservoir["map"] == pytest.approx(95 / 108)
    assert reservoir["precision@3"] == pytest.approx(2 / 3)
    assert reservoir["hit_rate@3"] == pytest.approx(1.0)
    assert reservoir["recall@3"] == pytest.approx(8 / 9)
    assert (reservoir["n_queries"], reservoir["n_queries_without_relevant"]) == (3, 0)


def test_retrieval_metrics_with_path_ids_and_truncated_ranking():
    paths = np.array([f"img{i}.png" for i in range(6)])
    # Query row 0 (A1), top 4 including itself → 3 1 2 after self removal; |R| = 2 (rows 1, 5).
    out = retrieval_metrics(
        RANKED[:1, :4],
        {"sample": SAMPLES[:1]},
        {"sample": SAMPLES},
        k=3,
        query_ids=paths[:1],
        database_ids=paths,
    )
    # rel 0 1 0: AP@3 = (1/2) / min(2, 3) = 1/4; AP over the truncated list = (1/2) / 2 = 1/4.
    assert out["sample"]["map@3"] == pytest.approx(1 / 4)
    assert out["sample"]["map"] == pytest.approx(1 / 4)
    with pytest.raises(ValueError, match="k=4"):
        retrieval_metrics(
            RANKED[:1, :4], {"sample": SAMPLES[:1]}, {"sample": SAMPLES}, k=4,
            query_ids=paths[:1], database_ids=paths,
        )  # fmt: skip


def test_without_self_exclusion_the_query_counts_as_a_hit():
    # The original's protocol: q0's own entry is its first hit. rel 1 0 1 (A1 at ranks 1 and 3),
    # |R| = 3 (rows 0, 1, 5): AP@3 = (1 + 2/3) / 3 = 5/9.
    out = retrieval_metrics(RANKED[:1], {"sample": SAMPLES[:1]}, {"sample": SAMPLES}, k=3, exclude_self=False)
    assert out["sample"]["map@3"] == pytest.approx(5 / 9)


def test_metadata_metrics():
    # Porosity: the 4th truth is unknown; |errors| 0.05, 0, 0.1 → MAE 0.05.
    # log10 k: true 0 1 2 3, pred 0.5 1 1 3 → errors 0.5 0 -1 0, squared sum 1.25:
    # RMSE = sqrt(1.25 / 4); R² = 1 - 1.25 / Σ(y - 1.5)² = 1 - 1.25 / 5 = 0.75.
    out = metadata_metrics(
        [0.1, 0.2, 0.3, np.nan],
        [0.15, 0.2, 0.2, 0.5],
        [1.0, 10.0, 100.0, 1000.0],
        [10**0.5, 10.0, 10.0, 1000.0],
    )
    assert out["porosity_mae"] == pytest.approx(0.05)
    assert out["log10_permeability_rmse"] == pytest.approx(math.sqrt(1.25 / 4))
    assert out["log10_permeability_r2"] == pytest.approx(0.75)
    # Porosity R² over the 3 known: errors² 0.0025 + 0 + 0.01, Σ(y - 0.2)² = 0.02 → 1 - 0.0125 / 0.02.
    assert out["porosity_r2"] == pytest.approx(0.375)
    assert (out["n_porosity"], out["n_permeability"]) == (3, 4)
    with pytest.raises(ValueError, match="positive"):
        metadata_metrics([0.1], [0.1], [1.0], [0.0])


def test_per_sample_metadata_averages_slices_and_permeability_in_log10():
    # Sample A: porosity 0.1, predictions 0.0 and 0.3 → mean 0.15; k 10, predictions 1 and 100 → log10
    # mean 1 (geometric mean 10, exact). Sample B: porosity 0.3, predictions 0.2 and 0.3 → 0.25;
    # k 1000, predictions 10 and 10 → log10 1, error 2. Sample C's truth is unknown: left out.
    out = per_sample_metadata_metrics(
        ["A", "B", "A", "B", "C"],
        [0.1, 0.3, 0.1, 0.3, np.nan],
        [0.0, 0.2, 0.3, 0.3, 0.9],
        [10.0, 1000.0, 10.0, 1000.0, np.nan],
        [1.0, 10.0, 100.0, 10.0, 5.0],
    )
    assert out["porosity_mae"] == pytest.approx((0.05 + 0.05) / 2)
    assert out["log10_permeability_rmse"] == pytest.approx(math.sqrt((0 + 4) / 2))
    # log10 k truths 1 and 3 (mean 2): R² = 1 - 4 / 2 = -1; porosity truths 0.1, 0.3: 1 - 0.005 / 0.02.
    assert out["log10_permeability_r2"] == pytest.approx(-1.0)
    assert out["porosity_r2"] == pytest.approx(0.75)
    assert (out["n_porosity"], out["n_permeability"]) == (2, 2)


def test_per_sample_retrieval_ranks_sample_means():
    # Reservoir R: samples r1, r2; reservoir S: s1, s2. Each sample's two slices straddle its mean, so
    # no single slice decides: the means are r1 (1, 0), r2 (0.9, 0.1), s1 (0, 1), s2 (0.2, 0.8).
    means = {"r1": (1.0, 0.0), "r2": (0.9, 0.1), "s1": (0.0, 1.0), "s2": (0.2, 0.8)}
    samples, embeddings = [], []
    for name, (x, y) in means.items():
        for sign in (1, -1):
            samples.append(name)
            embeddings.append([x + sign * 0.5, y - sign * 0.5])
    rows = {
        "embedding": np.array(embeddings, np.float32),
        "sample_id": np.array(samples),
        "reservoir_id": np.array([s[0] for s in samples]),
    }
    out = per_sample_retrieval(rows, rows, k=2)
    # Each sample's nearest other mean is its reservoir's: AP@2 over |R| = 1 is 1 for every query.
    assert out["reservoir_per_sample/map@2"] == pytest.approx(1.0)
    assert out["reservoir_per_sample/precision@2"] == pytest.approx(0.5)
    # k is capped at the 3 other samples.
    assert "reservoir_per_sample/map@3" in per_sample_retrieval(rows, rows, k=10)
    # One query sample against the database: r1's slices as queries.
    queries = {key: value[:2] for key, value in rows.items()}
    assert per_sample_retrieval(queries, rows, k=1)["reservoir_per_sample/hit_rate@1"] == 1.0


def test_metric_labels_read_their_own_cut_off():
    assert metric_label("reservoir/map@10", 10) == "reservoir mAP@10"
    # Per-sample retrieval caps k at the other samples' count: the label follows the name.
    assert metric_label("reservoir_per_sample/map@5", 10) == "reservoir mAP@5 per sample"
    assert metric_label("metadata_per_sample/porosity_r2", 10) == "porosity R² per sample"
    with pytest.raises(KeyError):
        metric_label("reservoir/unknown", 10)

"""Sharded exact k-NN against a float64 numpy brute force (8 emulated CPU devices)."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rockir_jax.retrieval import KnnIndex, knn
from rockir_jax.sharding import make_mesh

# The package exports the function ``knn``, which shadows the submodule of the same name.
knn_module = importlib.import_module("rockir_jax.retrieval.knn")

DIM = 16


def _data(n, n_queries, seed=0):
    rng = np.random.default_rng(seed)
    database = rng.normal(size=(n, DIM)).astype(np.float32)
    queries = rng.normal(size=(n_queries, DIM)).astype(np.float32)
    return queries, database


def _reference(queries, database, metric="l2"):
    q, x = queries.astype(np.float64), database.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        return 1.0 - q @ x.T
    return np.sum(np.square(q[:, None, :] - x[None, :, :]), axis=-1)


def _check(queries, database, dist, idx, k, metric="l2", ref=None):
    ref = _reference(queries, database, metric) if ref is None else ref
    dist, idx = np.asarray(dist), np.asarray(idx)
    assert dist.shape == idx.shape == (len(queries), k)
    assert np.all((idx >= 0) & (idx < len(database)))
    expected = np.argsort(ref, axis=1, kind="stable")[:, :k]
    for row, (got, want) in enumerate(zip(idx, expected, strict=True)):
        assert set(got.tolist()) == set(want.tolist()), f"query {row}"
    assert np.all(np.diff(dist, axis=1) >= 0), "distances not ascending"
    scale = np.sum(queries.astype(np.float64) ** 2, axis=1)[:, None] + np.sum(
        database.astype(np.float64)[idx] ** 2, axis=-1
    )
    tol = 1e-5 * scale if metric == "l2" else 1e-6
    np.testing.assert_array_less(np.abs(dist - np.take_along_axis(ref, idx, axis=1)), tol)


@pytest.mark.parametrize(("n_queries", "k"), [(1, 1), (37, 10), (37, 200), (5, 1003)])
def test_uneven_database_on_8_devices(n_queries, k):
    assert jax.device_count() == 8
    queries, database = _data(1003, n_queries)  # 1003 rows: 126 per shard, 5 padding rows
    dist, idx = knn(queries, database, k)
    _check(queries, database, dist, idx, k)


@pytest.mark.parametrize("k", [10, 200])
def test_streamed_blocks_equal_brute_force(k):
    queries, database = _data(1003, 7, seed=1)
    # 300-row blocks: every block is padded to 304 rows and the last holds only 103.
    dist, idx = knn(queries, database, k, block_size=300)
    _check(queries, database, dist, idx, k)


def test_cosine_metric():
    queries, database = _data(1003, 9, seed=2)
    database *= np.random.default_rng(3).uniform(0.1, 10.0, size=(1003, 1)).astype(np.float32)
    dist, idx = knn(queries, database, 15, metric="cosine")
    _check(queries, database, dist, idx, 15, metric="cosine")
    streamed = knn(queries, database, 15, metric="cosine", block_size=256)
    np.testing.assert_array_equal(streamed[1], idx)


def test_numpy_in_numpy_out_and_jax_in_jax_out():
    queries, database = _data(100, 4)
    dist, idx = knn(queries, database, 3)
    assert isinstance(dist, np.ndarray) and isinstance(idx, np.ndarray)
    dist_j, idx_j = knn(jnp.asarray(queries), jnp.asarray(database), 3)
    assert isinstance(dist_j, jax.Array) and isinstance(idx_j, jax.Array)
    np.testing.assert_array_equal(np.asarray(idx_j), idx)
    np.testing.assert_allclose(np.asarray(dist_j), dist, rtol=1e-6)


def test_exclude_indices_drops_the_query_itself():
    _, database = _data(300, 0, seed=4)
    queries = database[:20]
    ref = _reference(queries, database)
    ref[np.arange(20), np.arange(20)] = np.inf
    for block_size in (None, 128):
        dist, idx = knn(queries, database, 5, exclude_indices=np.arange(20), block_size=block_size)
        assert not np.any(idx == np.arange(20)[:, None])
        _check(queries, database, dist, idx, 5, ref=ref)


def test_resident_index_reuse_and_query_batches(monkeypatch):
    queries, database = _data(1003, 37, seed=5)
    index = KnnIndex(database)
    first = index.search(queries[:3], 4)
    # Force several padded query batches through one compiled program.
    monkeypatch.setattr(knn_module, "QUERY_BATCH", 16)
    dist, idx = index.search(queries, 4)
    _check(queries, database, dist, idx, 4)
    np.testing.assert_array_equal(first[1], idx[:3])


def test_two_stage_top_k_on_one_device():
    # 6000 rows on one device is past the chunking threshold (4 * k * CHUNK = 5120 columns).
    queries, database = _data(6000, 11, seed=6)
    mesh = make_mesh(jax.devices()[:1])
    dist, idx = knn(queries, database, 10, mesh=mesh)
    _check(queries, database, dist, idx, 10)


def test_two_stage_top_k_when_all_winners_share_one_chunk():
    rng = np.random.default_rng(7)
    scores = rng.uniform(1.0, 2.0, size=(3, 64 * knn_module.CHUNK)).astype(np.float32)
    scores[0, 5 * knn_module.CHUNK : 5 * knn_module.CHUNK + 12] = rng.uniform(0.0, 0.5, size=12)
    cols = np.asarray(jax.jit(knn_module._smallest_k, static_argnums=1)(jnp.asarray(scores), 10))
    for row in range(3):
        assert set(cols[row].tolist()) == set(np.argsort(scores[row])[:10].tolist())


def test_caller_mesh_with_other_axis_name_and_explicit_axes():
    queries, database = _data(203, 6, seed=8)
    mesh = jax.make_mesh((4,), ("x",))
    dist, idx = knn(queries, database, 7, mesh=mesh)
    _check(queries, database, dist, idx, 7)


def test_invalid_k_and_inputs():
    queries, database = _data(50, 2)
    with pytest.raises(ValueError, match="k=51"):
        knn(queries, database, 51)
    with pytest.raises(ValueError, match="k=50"):
        knn(queries, database, 50, exclude_indices=np.arange(2))
    with pytest.raises(ValueError, match="k=51"):
        knn(queries, database, 51, block_size=16)
    with pytest.raises(ValueError, match="k=0"):
        knn(queries, database, 0)
    with pytest.raises(ValueError, match="dim"):
        knn(queries[:, :3], database, 1)
    bad = database.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        KnnIndex(bad)


def test_bfloat16_screen_error_stays_within_its_bound():
    rng = np.random.default_rng(9)
    database = (rng.normal(size=(500, 64)) * rng.uniform(0.1, 3.0, size=(500, 1))).astype(np.float32)
    queries = rng.normal(size=(40, 64)).astype(np.float32)
    rounded = lambda v: np.asarray(jnp.asarray(v).astype(jnp.bfloat16).astype(jnp.float32), np.float64)
    # float64 references: the screen sees bfloat16-rounded operands, the true score does not.
    screened = rounded(queries) @ rounded(database).T
    true = queries.astype(np.float64) @ database.astype(np.float64).T
    max_norm = jnp.asarray(np.linalg.norm(database, axis=1).max(), jnp.float32)
    bound = np.asarray(knn_module._screening_bound(jnp.asarray(queries), max_norm), np.float64)
    error = np.abs(2 * (screened - true)).max(axis=1)  # scores are ‖x‖² - 2 q·x
    assert np.all(error <= bound)
    assert np.all(error >= bound / 200), "bound far looser than the rounding it covers"


@pytest.mark.parametrize("devices", [1, 8])
def test_near_duplicates_fail_the_screen_and_stay_exact(devices):
    # Rows closer together than the bfloat16 screen can resolve (its bound here is about 0.5, the
    # distances about 0.3): it cannot verify, and the float32 path must answer.
    rng = np.random.default_rng(10)
    base = rng.normal(size=(1, 64)).astype(np.float32)
    database = (base + 0.05 * rng.normal(size=(2000, 64))).astype(np.float32)
    queries = (base + 0.05 * rng.normal(size=(knn_module.SCREEN_MIN_QUERIES + 8, 64))).astype(np.float32)
    dist, idx = knn(queries, database, 10, mesh=make_mesh(jax.devices()[:devices]))
    _check(queries, database, dist, idx, 10)


def test_screened_search_on_spread_out_rows_is_exact():
    queries, database = _data(6000, knn_module.SCREEN_MIN_QUERIES + 5, seed=11)
    dist, idx = knn(queries, database, 10, mesh=make_mesh(jax.devices()[:1]))
    _check(queries, database, dist, idx, 10)

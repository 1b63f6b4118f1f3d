"""Exact k-nearest-neighbour search, the database sharded by rows over the devices of a 1-D mesh.

Each device scores its shard with one matmul, keeps its k best rows by a two-stage top-k and re-scores
them exactly as ``Σ (q - x)²``; an all-gather and one more top-k give the global answer. Large query
batches screen in bfloat16 and verify the answer with a rounding bound, falling back to float32 when it
fails, so results never depend on the screen. Why each step is exact: docs/internals.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rockir_jax import sharding

Metric = Literal["l2", "cosine"]
AXIS = "db"
CHUNK = 128
"""Columns per chunk of the two-stage top-k (a power of two, a multiple of the CPU's SIMD width)."""
QUERY_BATCH = 1024
"""Queries per device call: bounds the (queries x shard rows) score matrix in memory."""
SCREEN_MIN_QUERIES = 32
"""Smallest query batch screened in bfloat16 (a bfloat16 matrix-vector product is slow on CPU)."""
SCREEN_CANDIDATES = 32
"""Rows per query and shard re-scored exactly after the bfloat16 screen (at least 2k)."""
_BF16_UNIT_ROUNDOFF = 2.0**-9


def _resolve_mesh(mesh: Mesh | None) -> Mesh:
    if mesh is None:
        mesh = sharding.make_mesh()
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must be 1-D, got axes {mesh.axis_names}")
    # The kernel names its axis and places nothing itself; an Auto-typed copy of the caller's mesh
    # (same devices) lets shard_map take unplaced queries whatever axis type the caller chose.
    return Mesh(mesh.devices, (AXIS,), axis_types=(AxisType.Auto,))


def _chunk_min(chunks: jax.Array) -> jax.Array:
    # Minima of halves rather than a reduce: XLA:CPU fuses these elementwise ops with the score
    # arithmetic into a single read of the matmul output, whereas its reduce kernel needs the
    # scores written out in full first (one more pass over Q x S floats).
    while chunks.shape[-1] > 1:
        half = chunks.shape[-1] // 2
        chunks = jnp.minimum(chunks[..., :half], chunks[..., half:])
    return chunks[..., 0]


def _smallest_k(scores: jax.Array, k: int) -> jax.Array:
    """Column indices of the k smallest scores of each row (unordered), by the two-stage top-k."""
    rows, cols = scores.shape
    # Chunking only pays when the kept chunks are a small fraction of the row.
    if cols % CHUNK or 4 * k * CHUNK > cols:
        return lax.top_k(-scores, k)[1]
    chunks = scores.reshape(rows, cols // CHUNK, CHUNK)
    _, best_chunks = lax.top_k(-_chunk_min(chunks), k)
    kept = jnp.take_along_axis(chunks, best_chunks[:, :, None], axis=1).reshape(rows, k * CHUNK)
    _, pos = lax.top_k(-kept, k)
    return jnp.take_along_axis(best_chunks, pos // CHUNK, axis=1) * CHUNK + pos % CHUNK


def _exact_distances(queries, shard, cols, first_id, valid_end):
    """``Σ (q - x)²`` of the rows ``cols`` of each query, +inf for padding rows, and their ids."""
    ids = first_id + cols
    exact = jnp.sum(jnp.square(queries[:, None, :] - shard[cols]), axis=-1)
    return jnp.where(ids < valid_end, exact, jnp.inf), ids


def _screening_bound(queries: jax.Array, max_norm: jax.Array) -> jax.Array:
    """Per query, the most the bfloat16 screen can move a score ``‖x‖² - 2 q·x`` (see module doc)."""
    dim = queries.shape[1]
    u = _BF16_UNIT_ROUNDOFF
    # Two operand roundings, then a float32 sum of ``dim`` products of the rounded operands.
    c = 2 * u + u * u + dim * 2.0**-24 * (1 + u) ** 2
    q_norm = jnp.linalg.norm(queries, axis=1)
    # Slack for the float32 arithmetic of the screened score and of the exact distances: a float32
    # sum of ``dim`` terms errs by at most ``dim·2⁻²⁴`` of their total, here at most (‖q‖ + max‖x‖)².
    slack = 2 * dim * 2.0**-24 * jnp.square(q_norm + max_norm)
    return 2 * c * q_norm * max_norm + slack


def _shard_candidates(
    queries: jax.Array,
    shard: jax.Array,
    shard_bf16: jax.Array,
    shard_sq: jax.Array,
    max_norm: jax.Array,
    offset: jax.Array,
    valid_end: jax.Array,
    *,
    k: int,
    precision: lax.Precision,
) -> tuple[jax.Array, jax.Array]:
    """Per device: this shard's k best rows, exactly re-scored, then merged over all devices."""
    rows = shard.shape[0]
    k_local = min(k, rows)
    first_id = offset + lax.axis_index(AXIS) * rows

    def float32_search():
        scores = shard_sq[None, :] - 2.0 * jnp.matmul(queries, shard.T, precision=precision)
        return _exact_distances(queries, shard, _smallest_k(scores, k_local), first_id, valid_end)

    n_candidates = max(SCREEN_CANDIDATES, 2 * k_local)
    if queries.shape[0] < SCREEN_MIN_QUERIES or n_candidates >= rows:
        exact, ids = float32_search()
    else:
        screened = shard_sq[None, :] - 2.0 * lax.dot_general(
            queries.astype(jnp.bfloat16),
            shard_bf16,
            (((1,), (1,)), ((), ())),
            preferred_element_type=jnp.float32,
        )
        cols = _smallest_k(screened, n_candidates)
        exact, ids = _exact_distances(queries, shard, cols, first_id, valid_end)
        neg_best, best = lax.top_k(-exact, k_local)
        exact, ids = -neg_best, jnp.take_along_axis(ids, best, axis=1)
        kth_exact = exact[:, -1]
        worst_candidate = jnp.max(jnp.take_along_axis(screened, cols, axis=1), axis=1)
        # The screened score leaves out ‖q‖², the exact distance includes it.
        q_sq = jnp.sum(jnp.square(queries), axis=1)
        outside_at_least = worst_candidate + q_sq - _screening_bound(queries, max_norm)
        verified = jnp.all(outside_at_least > kth_exact)
        exact, ids = lax.cond(verified, lambda: (exact, ids), float32_search)
    all_d = lax.all_gather(exact, AXIS, axis=1, tiled=True, to="invarying")
    all_i = lax.all_gather(ids, AXIS, axis=1, tiled=True, to="invarying")
    neg, pos = lax.top_k(-all_d, min(k, all_d.shape[1]))
    return -neg, jnp.take_along_axis(all_i, pos, axis=1)


def _normalize(x: jax.Array) -> jax.Array:
    # Zero vectors stay zero (cosine distance 1 to everything) instead of becoming NaN.
    norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
    return x / jnp.maximum(norm, jnp.finfo(x.dtype).tiny)


@partial(jax.jit, static_argnames=("k", "metric", "mesh", "precision"))
def _search_block(
    queries: jax.Array,
    shard: jax.Array,
    shard_bf16: jax.Array,
    shard_sq: jax.Array,
    max_norm: jax.Array,
    offset: jax.Array,
    valid_end: jax.Array,
    *,
    k: int,
    metric: Metric,
    mesh: Mesh,
    precision: lax.Precision,
) -> tuple[jax.Array, jax.Array]:
    q = queries.astype(jnp.float32)
    if metric == "cosine":
        q = _normalize(q)
    search = jax.shard_map(
        partial(_shard_candidates, k=k, precision=precision),
        mesh=mesh,
        in_specs=(P(), P(AXIS), P(AXIS), P(AXIS), P(), P(), P()),
        out_specs=(P(), P()),
    )
    dist, idx = search(q, shard, shard_bf16, shard_sq, max_norm, offset, valid_end)
    # On unit vectors ‖q - x‖² = 2 - 2 cos, so halving gives the cosine distance 1 - cos.
    return (dist / 2 if metric == "cosine" else dist), idx


@partial(jax.jit, static_argnames="k")
def _merge(
    dist_a: jax.Array, idx_a: jax.Array, dist_b: jax.Array, idx_b: jax.Array, *, k: int
) -> tuple[jax.Array, jax.Array]:
    dist = jnp.concatenate([dist_a, dist_b], axis=1)
    idx = jnp.concatenate([idx_a, idx_b], axis=1)
    neg, pos = lax.top_k(-dist, k)
    return -neg, jnp.take_along_axis(idx, pos, axis=1)


@partial(jax.jit, static_argnames="k")
def _drop_excluded(
    dist: jax.Array, idx: jax.Array, exclude: jax.Array, *, k: int
) -> tuple[jax.Array, jax.Array]:
    # A stable sort on "is excluded" keeps the ranking order of the others and pushes the
    # excluded row (if it was found) past the k kept slots.
    order = jnp.argsort(idx == exclude[:, None], axis=1, stable=True)[:, :k]
    return jnp.take_along_axis(dist, order, axis=1), jnp.take_along_axis(idx, order, axis=1)


@partial(jax.jit, static_argnames="metric")
def _prepare(block: jax.Array, n_rows: jax.Array, *, metric: Metric):
    """float32 rows, their bfloat16 copy for screening, squared norms (+inf on padding), max norm."""
    x = block.astype(jnp.float32)
    if metric == "cosine":
        x = _normalize(x)
    sq = jnp.sum(jnp.square(x), axis=1)
    return (
        x,
        x.astype(jnp.bfloat16),
        jnp.where(jnp.arange(x.shape[0]) < n_rows, sq, jnp.inf),
        jnp.sqrt(sq.max()),
    )


def _rows_per_shard(n: int, n_devices: int) -> int:
    rows = math.ceil(n / n_devices)
    # Round up to whole chunks only when the shard is large enough for the two-stage top-k.
    return math.ceil(rows / CHUNK) * CHUNK if rows >= 4 * CHUNK else rows


def _pad_rows(x: np.ndarray | jax.Array, rows: int) -> np.ndarray | jax.Array:
    pad = ((0, rows - x.shape[0]), (0, 0))
    return np.pad(x, pad) if isinstance(x, np.ndarray) else jnp.pad(x, pad)


def _as_2d(x: np.ndarray | jax.Array, name: str) -> np.ndarray | jax.Array:
    if not isinstance(x, jax.Array):
        x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {x.shape}")
    return x


def _check_k(k: int, n: int, excluding: bool) -> None:
    limit = n - 1 if excluding else n
    if not 1 <= k <= limit:
        raise ValueError(
            f"k={k} must be between 1 and {limit} (database rows: {n}"
            f"{', one excluded per query' if excluding else ''})"
        )


class _Placed:
    """One block of database rows, padded and sharded over the mesh with its squared norms."""

    def __init__(self, block: np.ndarray | jax.Array, rows: int, mesh: Mesh, metric: Metric):
        sharding = NamedSharding(mesh, P(AXIS))
        n_rows = block.shape[0]
        padded = _pad_rows(block, rows)
        if isinstance(padded, np.ndarray):
            # Every process holds the same rows and gives its own devices their shards: no transfer
            # crosses hosts, so the mesh may span several processes.
            padded = jax.make_array_from_callback(
                padded.shape, NamedSharding(mesh, P(AXIS, None)), lambda where: padded[where]
            )
        prepared = _prepare(padded, jnp.int32(n_rows), metric=metric)
        self.vectors, self.screen_vectors, self.sq_norms, self.max_norm = prepared
        self.sq_norms = jax.device_put(self.sq_norms, sharding)

    def arrays(self) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """What :func:`_search_block` takes after the queries."""
        return self.vectors, self.screen_vectors, self.sq_norms, self.max_norm


class KnnIndex:
    """A database resident on the devices of a mesh, searched exactly by :meth:`search`.

    The padded, sharded database and its squared norms are placed once; every :meth:`search` call
    then only moves the queries, and its compiled program is cached per query batch size and k.

    Args:
        database: (N, D) vectors, numpy or jax; cast to float32.
        metric: ``"l2"`` (squared Euclidean distance) or ``"cosine"`` (``1 - cos``; vectors are
            normalised here, zero vectors stay zero and are at distance 1 from everything).
        mesh: a 1-D device mesh, any axis name and type (default: all devices, of all processes;
            every process then passes the same database and queries and gets the same results).
        precision: matmul precision of the scoring stage; HIGHEST keeps GPUs off TF32 so the
            candidates are chosen on float32 scores (the final distances are exact regardless).
    """

    def __init__(
        self,
        database: np.ndarray | jax.Array,
        *,
        metric: Metric = "l2",
        mesh: Mesh | None = None,
        precision: lax.Precision = lax.Precision.HIGHEST,
    ):
        if metric not in ("l2", "cosine"):
            raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
        database = _as_2d(database, "database")
        self.mesh = _resolve_mesh(mesh)
        self.metric: Metric = metric
        self.precision = precision
        self.size, self.dim = database.shape
        if self.size == 0:
            raise ValueError("database is empty")
        rows = _rows_per_shard(self.size, self.mesh.size) * self.mesh.size
        self._placed = _Placed(database, rows, self.mesh, metric)
        if not bool(jnp.isfinite(self._placed.vectors).all()):
            raise ValueError("database contains NaN or infinite values")

    def search(
        self,
        queries: np.ndarray | jax.Array,
        k: int,
        *,
        exclude_indices: np.ndarray | jax.Array | None = None,
    ) -> tuple[np.ndarray, np.ndarray] | tuple[jax.Array, jax.Array]:
        """The k nearest database rows of every query, nearest first.

        Args:
            queries: (Q, D) vectors.
            k: neighbours per query, ``1 ≤ k ≤ N`` (``≤ N - 1`` with ``exclude_indices``).
            exclude_indices: (Q,) one database row per query never to return (e.g. the query itself
                when the queries are database rows: ``np.arange(N)``).

        Returns:
            ``(distances, indices)``, both (Q, k): float32 squared L2 (or cosine) distances,
            ascending, and int32 database rows; numpy arrays when ``queries`` is not a jax array,
            else jax arrays.
        """
        to_numpy = not isinstance(queries, jax.Array)
        dist, idx = self._search(_as_2d(queries, "queries"), k, exclude_indices)
        return (np.asarray(dist), np.asarray(idx)) if to_numpy else (dist, idx)

    def _search(self, queries, k, exclude_indices):
        _check_k(k, self.size, exclude_indices is not None)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dim {queries.shape[1]}, database has {self.dim}")
        k_search = k if exclude_indices is None else k + 1
        parts = [
            _search_block(
                batch,
                *self._placed.arrays(),
                jnp.int32(0),
                jnp.int32(self.size),
                k=k_search,
                metric=self.metric,
                mesh=self.mesh,
                precision=self.precision,
            )
            for batch in _query_batches(queries)
        ]
        return _finish(parts, queries.shape[0], k, exclude_indices)


def _query_batches(queries: np.ndarray | jax.Array) -> Iterator[np.ndarray | jax.Array]:
    n = queries.shape[0]
    if n <= QUERY_BATCH:
        yield queries
        return
    # Pad the last batch so every call reuses one compiled program.
    for start in range(0, n, QUERY_BATCH):
        yield _pad_rows(queries[start : start + QUERY_BATCH], QUERY_BATCH)


def _finish(parts, n_queries, k, exclude_indices):
    dist = jnp.concatenate([d for d, _ in parts])[:n_queries]
    idx = jnp.concatenate([i for _, i in parts])[:n_queries]
    if exclude_indices is not None:
        exclude = jnp.asarray(exclude_indices, dtype=jnp.int32)
        if exclude.shape != (n_queries,):
            raise ValueError(f"exclude_indices must have shape ({n_queries},), got {exclude.shape}")
        dist, idx = _drop_excluded(dist, idx, exclude, k=k)
    return dist, idx


def _streamed_search(queries, database, k, exclude_indices, *, metric, mesh, block_size, precision):
    n = database.shape[0]
    _check_k(k, n, exclude_indices is not None)
    k_search = k if exclude_indices is None else k + 1
    rows = _rows_per_shard(block_size, mesh.size) * mesh.size
    parts = []
    for batch in _query_batches(queries):
        best = None
        for start in range(0, n, block_size):
            block = database[start : start + block_size]
            placed = _Placed(block, rows, mesh, metric)
            if best is not None:
                # Dispatch is asynchronous: without this wait the loop would run ahead and put
                # every block on the devices at once. This block's transfer still overlaps the
                # previous block's search, and at most two blocks are resident.
                jax.block_until_ready(best)
            # Padding sits at the end of every block: ids past this block's rows are padding.
            found = _search_block(
                batch,
                *placed.arrays(),
                jnp.int32(start),
                jnp.int32(start + block.shape[0]),
                k=k_search,
                metric=metric,
                mesh=mesh,
                precision=precision,
            )
            best = found if best is None else _merge(*best, *found, k=k_search)
        parts.append(best)
    return _finish(parts, queries.shape[0], k, exclude_indices)


def knn(
    queries: np.ndarray | jax.Array,
    database: np.ndarray | jax.Array,
    k: int,
    *,
    metric: Metric = "l2",
    mesh: Mesh | None = None,
    block_size: int | None = None,
    exclude_indices: np.ndarray | jax.Array | None = None,
    precision: lax.Precision = lax.Precision.HIGHEST,
) -> tuple[np.ndarray, np.ndarray] | tuple[jax.Array, jax.Array]:
    """Exact k nearest neighbours of ``queries`` in ``database``, nearest first.

    Args:
        queries: (Q, D) vectors, numpy or jax.
        database: (N, D) vectors, numpy or jax.
        k: neighbours per query, ``1 ≤ k ≤ N`` (``≤ N - 1`` with ``exclude_indices``); larger is a
            ``ValueError``.
        metric: ``"l2"``: squared Euclidean distance; ``"cosine"``: ``1 - cos`` (see
            :class:`KnnIndex`).
        mesh: 1-D device mesh over which the database is sharded (default: all devices, see
            :class:`KnnIndex`).
        block_size: if set and smaller than N, the database is streamed from the host in blocks of
            this many rows (for databases that do not fit on the devices), keeping a running top-k.
            Streamed blocks are not checked for NaN or infinite values.
        exclude_indices: (Q,) a database row per query never to return (the query itself when
            searching a database with its own rows).
        precision: matmul precision of the candidate scoring (see :class:`KnnIndex`).

    Returns:
        ``(distances, indices)``, both (Q, k): float32 distances ascending and int32 database rows;
        numpy arrays when ``queries`` is not a jax array, else jax arrays.

    For repeated queries against one database use :class:`KnnIndex`, which keeps it on the devices.
    """
    if block_size is None or block_size >= len(database):
        index = KnnIndex(database, metric=metric, mesh=mesh, precision=precision)
        return index.search(queries, k, exclude_indices=exclude_indices)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if metric not in ("l2", "cosine"):
        raise ValueError(f"metric must be 'l2' or 'cosine', got {metric!r}")
    to_numpy = not isinstance(queries, jax.Array)
    q = _as_2d(queries, "queries")
    database = _as_2d(database, "database")
    if q.shape[1] != database.shape[1]:
        raise ValueError(f"queries have dim {q.shape[1]}, database has {database.shape[1]}")
    dist, idx = _streamed_search(
        q,
        database,
        k,
        exclude_indices,
        metric=metric,
        mesh=_resolve_mesh(mesh),
        block_size=block_size,
        precision=precision,
    )
    return (np.asarray(dist), np.asarray(idx)) if to_numpy else (dist, idx)

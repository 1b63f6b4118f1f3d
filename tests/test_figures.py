"""The 3x3 retrieval figure on a tiny synthetic database."""

import numpy as np
from PIL import Image

from rockir_jax.retrieval import RetrievalIndex, query_from_index, retrieval_figure, select_hits

# Reservoirs R1 (samples R1a, R1b) and R2 (sample R2a).
SAMPLES = np.array(["R1a", "R1a", "R1a", "R1a", "R1b", "R1b", "R2a", "R2a", "R2a", "R2a"])
RESERVOIRS = np.array([s[:2] for s in SAMPLES])


def _index(rng):
    n = len(SAMPLES)
    return RetrievalIndex(
        embeddings=rng.normal(size=(n, 4)),
        paths=[f"img{i}.png" for i in range(n)],
        samples=SAMPLES,
        reservoirs=RESERVOIRS,
        predicted_porosity=rng.uniform(0.05, 0.3, n),
        predicted_permeability=rng.uniform(1e-14, 1e-12, n),
        true_porosity=rng.uniform(0.05, 0.3, n),
        true_permeability=np.full(n, np.nan),
    )


def test_select_hits_keeps_ranking_order_per_kind():
    # Query row 0 (R1a), ranking without itself.
    ranking = [6, 4, 1, 7, 2, 5, 8, 3, 9]
    hits = select_hits(ranking, SAMPLES, RESERVOIRS, "R1a", "R1")
    # same sample: rows 1, 2, 3 at positions 2, 4, 7; same reservoir other sample: rows 4, 5 at
    # positions 1, 5 (only two exist); other reservoir: rows 6, 7, 8 at positions 0, 3, 6.
    assert hits == [[2, 4, 7], [1, 5], [0, 3, 6]]


def test_figure_writes_png_of_expected_size(tmp_path):
    rng = np.random.default_rng(0)
    index = _index(rng)
    images = rng.integers(0, 256, size=(len(SAMPLES), 24, 24), dtype=np.uint8)
    query = query_from_index(index, 0, images, perm_unit="m²")
    ranking = [6, 4, 1, 7, 2, 5, 8, 3, 9]
    calls = []

    def load(row):
        calls.append(row)
        return np.repeat(images[row][..., None], 3, axis=-1)  # RGB works too

    out = retrieval_figure(
        tmp_path / "fig.png", query, ranking, index, load, tile_inches=1.5, dpi=50, perm_unit="m²"
    )
    with Image.open(out) as png:
        assert png.format == "PNG"
        assert png.size == (4 * 75, 3 * 75)  # (per_row + 1) x 3 tiles of 1.5 in at 50 dpi
    assert sorted(calls) == [1, 2, 3, 4, 5, 6, 7, 8]  # 8 hits shown, one slot empty

"""The query command: hits against a numpy brute force over the saved index, and its predictions."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from test_evaluate import PIXEL_SIZE, exits_with_error, reference_outputs, shared_run, train_folder

from rockir_jax.cli import search
from rockir_jax.retrieval import evaluation, load_index, save_index
from rockir_jax.retrieval import search as search_lib
from rockir_jax.retrieval.loading import load_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(data root, run, saved index of the held-out db_test images)."""
    root, _, run = shared_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("eval")
    evaluation.evaluate(load_model(run), root, out, figures=0, batch_size=8)
    return root, run, out / "index"


def parse_hits(printed: str) -> list[tuple[int, float, str, str, str]]:
    rows = [
        line.split() for line in printed.splitlines() if line.split()[:1] != [] and line.split()[0].isdigit()
    ]
    return [(int(r), float(d), s, res, p) for r, d, s, res, p in rows]


def test_saved_index_hits_match_brute_force(setup, tmp_path, capsys, monkeypatch):
    root, run, index_dir = setup
    index = load_index(index_dir)
    query_row = 5
    query = index.paths[query_row]
    built = []
    build_index = search_lib.build_index
    monkeypatch.setattr(search_lib, "build_index", lambda *a, **kw: built.append(1) or build_index(*a, **kw))
    figure = tmp_path / "query.png"
    search.main(["--workdir", str(run), "--db", str(index_dir), "--query", query, "-k", "6",
                 "--metadata", str(root / "metadata.csv"), "--figure", str(figure)])  # fmt: skip
    printed = capsys.readouterr().out
    assert not built  # only the query was embedded: the database came from the saved index

    x = index.embeddings.astype(np.float64)
    distances = np.sum((x - x[query_row]) ** 2, axis=1)
    distances[query_row] = np.inf  # the query's own file is not a hit
    expected = np.argsort(distances)[:6]
    hits = parse_hits(printed)
    assert [h[0] for h in hits] == [1, 2, 3, 4, 5, 6]
    assert [h[4] for h in hits] == [index.paths[r] for r in expected]
    assert [h[2] for h in hits] == [index.samples[r] for r in expected]
    np.testing.assert_allclose([h[1] for h in hits], distances[expected], rtol=1e-4, atol=1e-5)

    _, reg = reference_outputs(run, Path(query))
    porosity = float(printed.split("predicted porosity: ")[1].split()[0])
    permeability = float(printed.split("predicted permeability: ")[1].split()[0])
    assert porosity == pytest.approx(reg[0], rel=1e-4, abs=1e-6)
    assert permeability == pytest.approx(10 ** (5 * reg[1]) * PIXEL_SIZE**2, rel=1e-4)
    assert f"(pixel size {PIXEL_SIZE:g})" in printed and figure.stat().st_size > 0


def test_folder_database_and_unknown_pixel_size(setup, capsys):
    root, run, _ = setup
    query = sorted(train_folder(root, "BBB002").iterdir())[0]  # not in db_test
    search.main(["--workdir", str(run), "--db", str(root), "--query", str(query), "-k", "3"])
    printed = capsys.readouterr().out
    assert "sample BBB002, reservoir BBB" in printed
    assert "scaled: the pixel size is unknown" in printed
    assert len(parse_hits(printed)) == 3
    search.main(["--workdir", str(run), "--db", str(root), "--query", str(query), "-k", "2",
                 "--pixel-size", "3"])  # fmt: skip
    _, reg = reference_outputs(run, Path(query))
    printed = capsys.readouterr().out
    permeability = float(printed.split("predicted permeability: ")[1].split()[0])
    assert permeability == pytest.approx(10 ** (5 * reg[1]) * 9.0, rel=1e-4)


def test_index_of_another_model_is_refused(setup, tmp_path, capsys):
    root, run, index_dir = setup
    other = tmp_path / "other"
    shutil.copytree(index_dir, other)
    index = load_index(other)
    index.model["step"] = 1
    save_index(other, index)
    query = sorted((root / "db_test").iterdir())[0]
    other_model = ["--workdir", str(run), "--db", str(other), "--query", str(query)]
    exits_with_error(capsys, "not comparable", search.main, other_model)
    missing = ["--workdir", str(run), "--db", str(index_dir), "--query", str(tmp_path / "x.png")]
    exits_with_error(capsys, r"1 problem in the query image:\n.*no such query image", search.main, missing)

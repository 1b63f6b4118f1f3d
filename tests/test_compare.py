"""Model comparison: Siamese runs trained for one step, the shared DSNN run reused, baselines evaluated."""

import json
import shutil

import numpy as np
import pytest
from test_evaluate import exits_with_error, shared_run, short_config

from rockir_jax.cli import compare
from rockir_jax.experiments import comparison
from rockir_jax.retrieval import load_index


@pytest.mark.slow
def test_comparison_table_has_every_model(tmp_path_factory, tmp_path, capsys):
    root, _, run = shared_run(tmp_path_factory)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(short_config(root, tmp_path / "cache").to_dict()))
    out = tmp_path / "comparison"
    shutil.copytree(run, out / "runs" / "DSNN-R18" / "seed0")  # the config's seed
    args = ["--out", str(out), "--config", str(config), "--steps", "1"]
    exits_with_error(capsys, "pass --reuse", compare.main, args)

    compare.main([*args, "--reuse"])
    table = json.loads((out / "comparison.json").read_text())
    rows = {row["name"]: row for row in table["models"]}
    assert list(rows) == ["DSNN-R18", "Siamese-R18", "Siamese-R34", "Vanilla-R34", "Texture"]
    assert table["split"] == "db_test" and table["n_images"] == 12
    assert rows["DSNN-R18"]["runs"][0]["train_seconds"] is None and rows["DSNN-R18"]["steps"] == 2  # reused
    assert rows["Siamese-R18"]["steps"] == 1 and rows["Siamese-R34"]["backbone"] == "resnet34"
    assert rows["Vanilla-R34"]["initialisation"] == "random" and rows["Vanilla-R34"]["image_size"] == 32
    for row in rows.values():
        assert 0.0 <= row["metrics"]["reservoir/map@10"] <= 1.0
        assert ("metadata/porosity_mae" in row["metrics"]) == (row["model"] in ("dsnn", "texture"))
    markdown = (out / "comparison.md").read_text().splitlines()
    body = [line for line in markdown if line.startswith("| ") and not line.startswith("| model")]
    assert len(body) == 6  # the separator row and five models
    assert body[-2].startswith("| Vanilla-R34 | random | 0 |") and body[-2].endswith("| – | – | – |")
    assert rows["DSNN-R18"]["metrics_std"]["reservoir/map@10"] == 0.0  # one seed


def test_several_seeds_give_the_mean_and_spread_of_each_metric():
    runs = [{"a/x": 1.0, "b/y": 2.0}, {"a/x": 2.0, "b/y": 2.0}, {"a/x": 6.0}]
    mean, std = comparison.seed_statistics(runs)
    assert mean == {"a/x": 3.0}  # only what every seed measured
    assert std["a/x"] == pytest.approx(((4 + 1 + 9) / 2) ** 0.5)  # ddof 1
    table = {
        "db": "/db", "split": "db_test", "n_images": 4, "k": 10, "seeds": [0, 1, 2], "machine": "cpu",
        "models": [{"name": "DSNN-R18", "initialisation": "random", "steps": 5,
                    "metrics": {"reservoir/map@10": 0.5}, "metrics_std": {"reservoir/map@10": 0.25}}],
    }  # fmt: skip
    markdown = comparison.comparison_markdown(table, columns=[("reservoir", "map@{k}")])
    assert "| DSNN-R18 | random | 5 | 0.500 ± 0.250 |" in markdown
    assert "over seeds 0, 1, 2" in markdown


def test_chosen_models_with_several_seeds(tmp_path_factory, tmp_path):
    root, _, _ = shared_run(tmp_path_factory)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(short_config(root, tmp_path / "cache").to_dict()))
    out = tmp_path / "comparison"
    compare.main(["--out", str(out), "--config", str(config), "--models", "Vanilla-R34", "--seeds", "3", "4"])
    table = json.loads((out / "comparison.json").read_text())
    (row,) = table["models"]
    assert row["name"] == "Vanilla-R34" and row["seeds"] == [3, 4] == table["seeds"]
    runs = [run["metrics"]["reservoir/map@10"] for run in row["runs"]]
    seeds = [load_index(out / "eval" / "Vanilla-R34" / f"seed{s}" / "index").embeddings for s in (3, 4)]
    assert not np.allclose(*seeds)  # another random initialisation per seed
    assert row["metrics"]["reservoir/map@10"] == pytest.approx(np.mean(runs))
    assert row["metrics_std"]["reservoir/map@10"] == pytest.approx(np.std(runs, ddof=1))
    assert sorted(p.name for p in (out / "eval" / "Vanilla-R34").iterdir()) == ["seed3", "seed4"]
    assert "± " in (out / "comparison.md").read_text()

"""Model comparison: Siamese runs trained for one step, the shared DSNN run reused, vanilla evaluated."""

import json
import shutil

from test_evaluate import exits_with_error, shared_run, short_config

from rockir_jax.cli import compare


def test_comparison_table_has_the_four_models(tmp_path_factory, tmp_path, capsys):
    root, _, run = shared_run(tmp_path_factory)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(short_config(root, tmp_path / "cache").to_dict()))
    out = tmp_path / "comparison"
    shutil.copytree(run, out / "runs" / "DSNN-R18")
    args = ["--out", str(out), "--config", str(config), "--steps", "1"]
    exits_with_error(capsys, "pass --reuse", compare.main, args)

    compare.main([*args, "--reuse"])
    table = json.loads((out / "comparison.json").read_text())
    rows = {row["name"]: row for row in table["models"]}
    assert list(rows) == ["DSNN-R18", "Siamese-R18", "Siamese-R34", "Vanilla-R34"]
    assert table["split"] == "db_test" and table["n_images"] == 12
    assert rows["DSNN-R18"]["train_seconds"] is None and rows["DSNN-R18"]["steps"] == 2  # reused
    assert rows["Siamese-R18"]["steps"] == 1 and rows["Siamese-R34"]["backbone"] == "resnet34"
    assert rows["Vanilla-R34"]["initialisation"] == "random" and rows["Vanilla-R34"]["image_size"] == 32
    for row in rows.values():
        assert 0.0 <= row["metrics"]["reservoir/map@10"] <= 1.0
        assert ("metadata/porosity_mae" in row["metrics"]) == (row["model"] == "dsnn")
    markdown = (out / "comparison.md").read_text().splitlines()
    body = [line for line in markdown if line.startswith("| ") and not line.startswith("| model")]
    assert len(body) == 5  # the separator row and four models
    assert body[-1].startswith("| Vanilla-R34 | random | 0 |") and body[-1].endswith("| – | – | – |")

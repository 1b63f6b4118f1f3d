"""The few-shot study's table, plot and configs, with the training replaced by recorded answers."""

import json

import numpy as np
from PIL import Image

from configs import default
from rockir_jax.experiments import few_shot


def test_each_count_trains_on_that_many_samples_and_is_tabulated_and_plotted(tmp_path, monkeypatch):
    calls = []
    # Invented answers: reservoir mAP@10 rises with the count; only the DSNN predicts permeability.
    answers = {1: (0.4, 0.1), 2: (0.6, 0.05), 4: (0.8, 0.02)}

    def fake_compare(config, out, *, seeds, models, reuse, k):
        count = config.data.train_samples_per_reservoir
        calls.append((count, out.name, tuple(seeds), tuple(models)))
        mean, std = answers[count]
        rows = [
            {"name": "DSNN-R18", "metrics": {"reservoir/map@10": mean, "metadata/log10_permeability_r2": 0.5},
             "metrics_std": {"reservoir/map@10": std, "metadata/log10_permeability_r2": 0.1}},
            {"name": "Siamese-R18", "metrics": {"reservoir/map@10": mean - 0.1},
             "metrics_std": {"reservoir/map@10": std}},
        ]  # fmt: skip
        return {"machine": "test", "models": rows}

    monkeypatch.setattr(few_shot, "compare_models", fake_compare)
    base = default.get_config()
    result = few_shot.few_shot(
        base, tmp_path, counts=[1, 2, 4], seeds=[0, 1], models=["DSNN-R18", "Siamese-R18"]
    )
    assert calls == [(n, f"{n}_per_reservoir", (0, 1), ("DSNN-R18", "Siamese-R18")) for n in (1, 2, 4)]
    assert base.data.train_samples_per_reservoir == 0  # the caller's config is left alone
    assert len(result["points"]) == 6
    assert json.loads((tmp_path / "few_shot.json").read_text())["points"] == result["points"]

    table = (tmp_path / "few_shot.md").read_text()
    assert "| 2 | DSNN-R18 | 0.600 ± 0.050 | – | 0.500 ± 0.100 | – |" in table
    assert "| 4 | Siamese-R18 | 0.700 ± 0.020 | – | – | – |" in table
    assert "over seeds 0, 1" in table
    image = np.asarray(Image.open(tmp_path / "few_shot.png").convert("L"))
    assert image.shape[1] > 800 and image.std() > 10  # two drawn panels, not a blank canvas


def test_the_count_reaches_the_training_data(tmp_path):
    from test_train import make_toy_dataset, tiny_config

    from rockir_jax.training import trainer

    root = make_toy_dataset(tmp_path / "toy")
    config = tiny_config(root, tmp_path / "cache")
    config.data.train_samples_per_reservoir = 1
    train_split = trainer._open_splits(config)["train"]
    # 3 reservoirs × 1 sample × 4 slices, the first sample of each: AAAS01, BBBS01 and CCCS01 are
    # ids 0, 3 and 6 among the nine samples (S01, S02 train and S03 val per reservoir).
    assert len(train_split) == 12
    assert sorted(set(np.asarray(train_split.sample_ids).tolist())) == [0, 3, 6]

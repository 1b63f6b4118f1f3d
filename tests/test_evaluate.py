"""Retrieval evaluation end to end: a 2-step run on a tiny generated rock set, split and flat layouts.

Also home of the tiny data set and short-run helpers that test_search and test_compare import.
"""

import json
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from rockir_jax.configuration import load_config
from rockir_jax.data.database import list_images
from rockir_jax.data.metadata import DataValidationError
from rockir_jax.images import read_image
from rockir_jax.jsonio import json_text
from rockir_jax.models import build_model, resnet_params
from rockir_jax.retrieval import load_index
from rockir_jax.retrieval.loading import load_model
from rockir_jax.training.checkpoint import restore_variables
from rockir_jax.training.trainer import train_and_evaluate
from scripts import evaluate_retrieval

SIZE = 32
RESERVOIRS = {"AAA": 60, "BBB": 130, "CCC": 200}  # mean grey level of each reservoir's images
PIXEL_SIZE = 2.0


def make_rocks(root: Path, samples_per_reservoir: int = 2, slices: int = 4, db_test: int = 0) -> Path:
    """A data set in the original RockIR's form: ``train/<Created_label>/`` folders with randomised
    names (``AA01`` …), images named ``<Image>_slice<k>.png``, ``db_test`` samples per reservoir (flat)
    and a CSV with the original's columns, ``Image`` holding the real sample name.

    Samples are named in the original convention (``AAA001``: reservoir ``AAA``); each image is noise
    around its reservoir's and sample's grey level, so retrieval has something to find.
    """
    rng = np.random.default_rng(0)
    names = [
        (r, reservoir, s)
        for r, reservoir in enumerate(RESERVOIRS)
        for s in range(samples_per_reservoir + db_test)
    ]
    # Randomised folder names, in an order unrelated to the samples'.
    labels = [f"A{chr(65 + i // 9)}{i % 9 + 1:02d}" for i in rng.permutation(len(names))]
    rows = []
    for (r, reservoir, s), label in zip(names, labels, strict=True):
        grey = RESERVOIRS[reservoir]
        sample = f"{reservoir}{s + 1:03d}"
        held_out = s >= samples_per_reservoir
        folder = root / "db_test" if held_out else root / "train" / label
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(slices):
            pixels = np.clip(rng.normal(grey + 15 * s, 30, (SIZE, SIZE)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").save(folder / f"{sample}_slice{k}.png")
        rows.append(
            {"Image": sample, "Label": r, "GI": 0, "NI": 0, "Size": SIZE, "Depth": 0,
             "Pixelsize": PIXEL_SIZE, "Created_label": label, "Porosity": 0.1 + 0.05 * r + 0.01 * s,
             "Permeability": 10.0 ** (r + 0.3 * s)}
        )  # fmt: skip
    csv = root / "metadata.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def train_folder(root: Path, sample: str) -> Path:
    """The ``train/`` folder of ``sample`` (its randomised ``Created_label``) in a :func:`make_rocks` set."""
    csv = pd.read_csv(root / "metadata.csv").set_index("Image")
    return root / "train" / csv.at[sample, "Created_label"]


def short_config(root: Path, cache_dir: Path):
    """configs/default.py at 32², batch 8, 2 steps: the cheapest real training run."""
    config = load_config(Path(__file__).parents[1] / "configs" / "default.py")
    config.image_size = SIZE
    config.global_batch_size = 8
    config.num_train_steps = 2
    config.eval_batch_size = 8
    # Evaluation shards over all 8 devices whatever trained the model; one device compiles faster.
    config.num_devices = 1
    config.conv_algorithm = "direct"  # compiles faster; the algorithms are tested in test_winograd
    config.data.root = str(root)
    config.data.metadata = str(root / "metadata.csv")
    config.data.cache_dir = str(cache_dir)
    return config


_SHARED: dict[str, tuple[Path, Path, Path]] = {}


def shared_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data root, flat copy of its train images, 2-step DSNN run), made once per test session.

    The root holds 2 training samples and 1 held-out ``db_test`` sample per reservoir. Training
    compiles for most of a minute on CPU, so every test module that needs a run shares this one.
    """
    if "run" not in _SHARED:
        root = tmp_path_factory.mktemp("rocks")
        make_rocks(root, db_test=1)
        flat = tmp_path_factory.mktemp("flat")
        for path in sorted((root / "train").glob("*/*.png")):
            shutil.copy(path, flat / path.name)
        workdir = tmp_path_factory.mktemp("run")
        train_and_evaluate(short_config(root, tmp_path_factory.mktemp("cache")), workdir)
        _SHARED["run"] = (root, flat, workdir)
    return _SHARED["run"]


@pytest.fixture(scope="module")
def rocks(tmp_path_factory):
    return shared_run(tmp_path_factory)[:2]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory)[2]


def brute_force(embeddings: np.ndarray, labels: np.ndarray, k: int) -> dict[str, float]:
    """float64 numpy reference: mean AP over the full ranking and AP@k / min(|R|, k), self excluded."""
    x = embeddings.astype(np.float64)
    distances = np.sum((x[:, None] - x[None]) ** 2, axis=-1)
    np.fill_diagonal(distances, np.inf)
    ap, ap_k = [], []
    for q in range(len(x)):
        order = np.argsort(distances[q])[:-1]  # the last one is the query itself (inf)
        relevant = labels[order] == labels[q]
        n_relevant = relevant.sum()
        precision = np.cumsum(relevant) / np.arange(1, len(order) + 1)
        ap.append(precision[relevant].sum() / n_relevant)
        ap_k.append(precision[:k][relevant[:k]].sum() / min(n_relevant, k))
    return {"map": float(np.mean(ap)), f"map@{k}": float(np.mean(ap_k))}


def reference_outputs(run: Path, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(embedding, regression) of one image straight from a run's checkpoint on one device, float64,
    averaged over the image's 8 orientations made by numpy (the default's test-time orientations)."""
    model = build_model("dsnn", "resnet18")
    variables, _ = restore_variables(run / "checkpoints")
    image = (read_image(path, SIZE).astype(np.float32) / 255.0 - 0.5) / 0.5
    turns = [np.rot90(image, k) for k in range(4)]
    views = np.ascontiguousarray(turns + [np.fliplr(turn) for turn in turns])
    out = jax.jit(lambda v, x: model.apply(v, x, method=model.embed))(jax.device_get(variables), views)
    return tuple(np.asarray(out[key], np.float64).mean(axis=0) for key in ("embedding", "reg"))


def evaluate_cli(*args: str) -> None:
    evaluate_retrieval.main([*map(str, args), "--batch-size", "8"])


def exits_with_error(capsys, pattern: str, command, *args) -> None:
    """``command(*args)`` exits with status 2 and one ``error: …`` message matching ``pattern``."""
    with pytest.raises(SystemExit) as exited:
        command(*args)
    assert exited.value.code == 2
    assert re.search(pattern, capsys.readouterr().err)


def test_split_layout_end_to_end(run, rocks, tmp_path):
    root, _ = rocks
    out = tmp_path / "eval"
    evaluate_cli("--workdir", run, "--db", root, "--split", "train", "--metadata", root / "metadata.csv",
                 "--out", out, "--figures", "2", "-k", "5")  # fmt: skip
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_images"] == 24 and report["n_samples"] == 6 and report["n_reservoirs"] == 3
    # Trained and evaluated on randomised folder names: reports show the real names.
    index = load_index(out / "index")
    assert set(index.samples) == {f"{r}00{s}" for r in RESERVOIRS for s in (1, 2)}
    assert set(index.reservoirs) == set(RESERVOIRS)
    assert report["seen_in_training"]["n_queries"] == 24  # the train split itself
    assert report["model"]["model"] == "dsnn" and report["model"]["step"] == 2
    metrics = report["metrics"]
    for level in ("sample", "reservoir"):
        for name in ("map@5", "map", "precision@5", "recall@5", "hit_rate@5", "map@5_original"):
            assert 0.0 <= metrics[f"{level}/{name}"] <= 1.0, (level, name)
    assert metrics["metadata/porosity_mae"] >= 0 and metrics["metadata/log10_permeability_rmse"] >= 0

    for level, labels in (("sample", index.samples), ("reservoir", index.reservoirs)):
        reference = brute_force(index.embeddings, labels, k=5)
        assert metrics[f"{level}/map"] == pytest.approx(reference["map"], abs=1e-6)
        assert metrics[f"{level}/map@5"] == pytest.approx(reference["map@5"], abs=1e-6)

    # Predictions are multiplied back by Pixelsize², truths are the CSV's values.
    csv = pd.read_csv(root / "metadata.csv").set_index("Image")
    np.testing.assert_allclose(index.true_porosity, csv.loc[index.samples, "Porosity"], rtol=1e-6)
    np.testing.assert_allclose(index.true_permeability, csv.loc[index.samples, "Permeability"], rtol=1e-5)
    expected = 10.0 ** (5 * index.predicted_targets[:, 1].astype(np.float64)) * PIXEL_SIZE**2
    np.testing.assert_allclose(index.predicted_permeability, expected, rtol=1e-5)
    mae = np.mean(np.abs(index.predicted_porosity - csv.loc[index.samples, "Porosity"].to_numpy()))
    assert metrics["metadata/porosity_mae"] == pytest.approx(mae, rel=1e-5)

    figures = sorted(p.name for p in out.glob("retrieval_*.png"))
    assert len(figures) == 2
    assert {f.removeprefix("retrieval_").removesuffix(".png") for f in figures} <= {
        Path(p).stem for p in index.paths
    }
    markdown = (out / "metrics.md").read_text()
    assert "hit rate@5" in markdown and "original RockIR" in markdown and "porosity MAE" in markdown
    assert "same prefix2" in markdown and "prefix2/map@5_original" in metrics


def test_flat_layout_with_and_without_metadata(run, rocks, tmp_path):
    root, flat = rocks
    table = list_images(flat)
    assert table.samples[0] == "AAA001" and table.reservoirs[0] == "AAA"
    assert sorted(set(table.reservoirs)) == ["AAA", "BBB", "CCC"] and len(set(table.samples)) == 6
    assert np.isnan(table.targets).all() and np.isnan(table.pixel_size).all()
    with_csv = list_images(flat, root / "metadata.csv")
    np.testing.assert_array_equal(with_csv.samples, table.samples)
    assert np.isfinite(with_csv.targets).all() and (with_csv.pixel_size == PIXEL_SIZE).all()

    evaluate_cli("--workdir", run, "--db", flat, "--out", tmp_path / "flat", "--figures", "1")
    report = json.loads((tmp_path / "flat" / "metrics.json").read_text())
    assert report["n_samples"] == 6 and report["n_images_with_metadata"] == 0
    assert not any(key.startswith("metadata/") for key in report["metrics"])
    assert "no image's sample is in a metadata CSV" in (tmp_path / "flat" / "metrics.md").read_text()
    assert len(list((tmp_path / "flat").glob("retrieval_*.png"))) == 1
    index = load_index(tmp_path / "flat" / "index")
    assert np.isnan(index.predicted_permeability).all()  # no pixel size: no physical permeability
    reference = brute_force(index.embeddings, index.reservoirs, k=10)
    assert report["metrics"]["reservoir/map"] == pytest.approx(reference["map"], abs=1e-6)


def test_clear_errors_name_the_file(run, rocks, tmp_path, capsys):
    root, _ = rocks
    missing = ("--workdir", run, "--db", tmp_path / "missing", "--out", tmp_path / "o")
    exits_with_error(capsys, "no such database folder", evaluate_cli, *missing)
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(next(train_folder(root, "AAA001").iterdir()), bad / "AAA001_slice0.png")
    (bad / "AAA001_slice1.png").write_bytes(b"not a png")
    bad_db = ("--workdir", run, "--db", bad, "--out", tmp_path / "o")
    exits_with_error(capsys, r"AAA001_slice1\.png: unreadable", evaluate_cli, *bad_db)
    empty_run = tmp_path / "empty_run"
    (empty_run / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.json", empty_run / "config.json")
    no_checkpoint = ("--workdir", empty_run, "--db", root, "--out", tmp_path / "o")
    exits_with_error(capsys, "no checkpoint", evaluate_cli, *no_checkpoint)
    with pytest.raises(DataValidationError, match="no images"):
        list_images(tmp_path / "empty_run")


def test_vanilla_uses_the_ported_backbone(tmp_path):
    module = build_model("vanilla", "resnet18")
    shapes = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, SIZE, SIZE, 3), np.float32))
    rng = np.random.default_rng(0)
    backbone = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)
    # A ported torchvision backbone: a bare ResNet's variables, with a classifier.
    ported = {name: dict(tree["image_backbone"]) for name, tree in backbone.items()}
    ported["params"]["fc"] = {"kernel": np.zeros((512, 10)), "bias": np.zeros(10)}  # dropped on load
    resnet_params.save_variables(ported, tmp_path / "weights")
    model = load_model(vanilla="resnet18", pretrained=tmp_path / "weights", image_size=SIZE)
    assert model.identity["pretrained"] == str((tmp_path / "weights").absolute())
    assert "fc" not in model.variables["params"]["image_backbone"]
    jax.tree.map(np.testing.assert_array_equal, model.variables, backbone)
    with pytest.raises(resnet_params.PortingError, match="does not fit"):
        load_model(vanilla="resnet34", pretrained=tmp_path / "weights", image_size=SIZE)


def test_json_report_writes_undefined_numbers_as_null():
    report = {"r2": float("nan"), "rows": [{"mae": float("inf"), "n": 3}], "ok": np.float64(0.5)}

    def reject(constant):
        raise ValueError(f"non-JSON constant {constant}")

    parsed = json.loads(json_text(report), parse_constant=reject)
    assert parsed == {"r2": None, "rows": [{"mae": None, "n": 3}], "ok": 0.5}


def test_a_database_smaller_than_k_evaluates_at_its_ranking_length(run, rocks, tmp_path, capsys):
    """The original's own db_test: 9 slices, flat, original naming, no CSV; k=10 is capped at 8."""
    root, _ = rocks
    db = tmp_path / "db_test"
    db.mkdir()
    sources = sorted((root / "db_test").glob("*.png"))[:9]
    for i, path in enumerate(sources):
        shutil.copy(path, db / f"E00{i // 3}M0_slice{i % 3 + 1}.png")
    evaluate_cli("--workdir", run, "--db", db, "--out", tmp_path / "eval", "-k", "10", "--figures", "0")
    printed = capsys.readouterr().out
    assert "note: k = 8 (asked 10)" in printed
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["k"] == 8 and report["k_requested"] == 10 and report["n_images"] == 9
    assert "sample/map@8" in report["metrics"] and "sample/map@10" not in report["metrics"]
    labels = load_index(tmp_path / "eval" / "index").samples
    reference = brute_force(load_index(tmp_path / "eval" / "index").embeddings, labels, k=8)
    assert report["metrics"]["sample/map@8"] == pytest.approx(reference["map@8"], abs=1e-6)

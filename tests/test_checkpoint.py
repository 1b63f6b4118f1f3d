"""Checkpoints that travel: a run saved on 8 devices is evaluated, searched and resumed in processes
with 1 and 3 devices, and exported as one directory that evaluates elsewhere."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from test_evaluate import make_rocks, short_config

from rockir_jax.retrieval import load_index
from rockir_jax.retrieval.evaluation import evaluate
from rockir_jax.retrieval.loading import load_model
from rockir_jax.training.checkpoint import export_model, read_model_dir, restore_variables
from rockir_jax.training.trainer import train_and_evaluate

REPO = Path(__file__).parents[1]

# One child process per device count: evaluate through the command (with 1 device also export, evaluate
# the exported model and search the run's index with it), then resume the run for one more step.
CHILD = """
import json, shutil, sys
from pathlib import Path
import jax
from rockir_jax.cli import evaluate, export, search
from rockir_jax.configuration import load_config
from rockir_jax.training.trainer import train_and_evaluate

run, root, out, model_dir = map(Path, sys.argv[1:5])
if len(jax.devices()) == 1:
    export.main(["--workdir", str(run), "--out", str(model_dir)])
common = ["--db", str(root), "--split", "db_test", "--metadata", str(root / "metadata.csv"),
          "--figures", "0", "--batch-size", "8"]
evaluate.main(["--workdir", str(run), "--out", str(out / "eval"), *common])
if len(jax.devices()) == 1:
    evaluate.main(["--model-dir", str(model_dir), "--out", str(out / "eval_export"), *common])
    query = sorted((root / "db_test").glob("*.png"))[0]
    search.main(["--model-dir", str(model_dir), "--db", str(out / "eval" / "index"), "--query", str(query),
                 "-k", "3", "--metadata", str(root / "metadata.csv")])
resumed = out / "resumed"
shutil.copytree(run, resumed)
config = load_config(resumed / "config.json")
config.num_train_steps = 3
state = train_and_evaluate(config, resumed)
print("RESULT", json.dumps({"devices": len(jax.devices()), "step": int(state.step)}))
"""


def _child(devices: int, run: Path, root: Path, out: Path, model_dir: Path) -> str:
    """Runs :data:`CHILD` with ``devices`` CPU devices; returns its output."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    args = [sys.executable, "-c", CHILD, *map(str, (run, root, out, model_dir))]
    child = subprocess.run(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert child.returncode == 0, child.stdout[-3000:]
    return child.stdout


def _train_losses(workdir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


@pytest.fixture(scope="module")
def travelled(tmp_path_factory):
    """An 8-device run, its 8-device evaluation and continuation; the children's outputs are added to
    the returned dict by :func:`_child_log`."""
    tmp = tmp_path_factory.mktemp("travel")
    root = tmp / "rocks"
    make_rocks(root, db_test=1)
    config = short_config(root, tmp / "cache")
    config.num_devices = 0  # batch 8 on all 8 devices, branch parallel
    run = tmp / "run8"
    train_and_evaluate(config, run)
    evaluate(load_model(run), root, tmp / "devices8" / "eval", metadata_csv=root / "metadata.csv",
             split="db_test", figures=0, batch_size=8)  # fmt: skip
    shutil.copytree(run, tmp / "devices8" / "resumed")
    config.num_train_steps = 3
    train_and_evaluate(config, tmp / "devices8" / "resumed")
    return tmp, {}


def _child_log(travelled, devices: int) -> str:
    """The output of the ``devices``-device child (evaluate, resume, and for 1 device export and
    search), run once per module: the 3-device one only for the slow tests."""
    tmp, logs = travelled
    if devices not in logs:
        logs[devices] = _child(
            devices, tmp / "run8", tmp / "rocks", tmp / f"devices{devices}", tmp / "exported"
        )
    return logs[devices]


OTHER_DEVICE_COUNTS = [1, pytest.param(3, marks=pytest.mark.slow)]


@pytest.mark.parametrize("devices", OTHER_DEVICE_COUNTS)
def test_evaluation_on_other_device_counts_equals_8_devices(travelled, devices):
    tmp, _ = travelled
    _child_log(travelled, devices)
    reference = json.loads((tmp / "devices8" / "eval" / "metrics.json").read_text())
    report = json.loads((tmp / f"devices{devices}" / "eval" / "metrics.json").read_text())
    assert report["model"] == reference["model"] and report["model"]["step"] == 2
    assert report["metrics"].keys() == reference["metrics"].keys()
    for name, value in reference["metrics"].items():
        # None is NaN in strict JSON: e.g. an R² over samples that share one value.
        expected = None if value is None else pytest.approx(value, rel=1e-5, abs=1e-6)
        assert report["metrics"][name] == expected, name
    # The embeddings themselves, not only their rank metrics.
    expected = load_index(tmp / "devices8" / "eval" / "index").embeddings
    np.testing.assert_allclose(
        load_index(tmp / f"devices{devices}" / "eval" / "index").embeddings, expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("devices", OTHER_DEVICE_COUNTS)
def test_resume_on_other_device_counts_continues_the_run(travelled, devices):
    tmp, logs = travelled
    _child_log(travelled, devices)
    result = json.loads(logs[devices].split("RESULT ", 1)[1].splitlines()[0])
    assert result == {"devices": devices, "step": 3}
    # 3 devices do not split the batch of 8: the resumed run trains on 2 (branch parallel).
    used = {1: "1 devices, data parallel", 3: "2 devices, branch parallel"}[devices]
    assert f"training on {used}" in logs[devices]
    reference, resumed = tmp / "devices8" / "resumed", tmp / f"devices{devices}" / "resumed"
    # Step 3's loss is the restored step-2 weights on the same step-3 batch: the weights, BatchNorm
    # statistics and data stream all carried over.
    expected, losses = _train_losses(reference), _train_losses(resumed)
    assert sorted(losses) == [2, 3] and np.isfinite(losses[3])
    assert losses[3] == pytest.approx(expected[3], rel=1e-4)
    variables, step = restore_variables(resumed / "checkpoints")
    expected_variables, _ = restore_variables(reference / "checkpoints")
    assert step == 3
    for leaf, expected_leaf in zip(*map(jax.tree.leaves, (variables, expected_variables)), strict=True):
        np.testing.assert_allclose(leaf, expected_leaf, rtol=0, atol=1e-4)


def test_exported_model_evaluates_and_searches_in_a_fresh_process(travelled):
    tmp, logs = travelled
    _child_log(travelled, 1)
    variables, config, manifest = read_model_dir(tmp / "exported")
    assert manifest["step"] == 2 and manifest["image_size"] == config.image_size == 32
    assert {"params", "batch_stats"} == variables.keys()
    saved, _ = restore_variables(tmp / "run8" / "checkpoints")
    for leaf, expected in zip(jax.tree.leaves(variables), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(leaf, expected)

    reference = json.loads((tmp / "devices8" / "eval" / "metrics.json").read_text())
    report = json.loads((tmp / "devices1" / "eval_export" / "metrics.json").read_text())
    # Same weights, same identity: an index of the run is searched with the exported model.
    assert report["model"] == reference["model"]
    for name, value in reference["metrics"].items():
        # None is NaN in strict JSON: e.g. an R² over samples that share one value.
        expected = None if value is None else pytest.approx(value, rel=1e-5, abs=1e-6)
        assert report["metrics"][name] == expected, name
    assert f"query: {tmp / 'rocks' / 'db_test' / 'AAA003_slice0.png'}" in logs[1]  # search's report


def test_export_refuses_a_non_empty_directory_and_a_bad_manifest(travelled, tmp_path):
    tmp, logs = travelled
    _child_log(travelled, 1)
    assert f"wrote {tmp / 'exported'}: use it with --model-dir" in logs[1]
    with pytest.raises(FileExistsError, match="already exists and is not empty"):
        export_model(tmp / "run8", tmp / "exported")
    copy = tmp_path / "copy"
    shutil.copytree(tmp / "exported", copy)
    manifest = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps(manifest | {"variables_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="do not match"):
        read_model_dir(copy)
    (copy / "model.json").write_text(json.dumps(manifest | {"backbone": "resnet34"}))
    with pytest.raises(ValueError, match="backbone"):
        read_model_dir(copy)

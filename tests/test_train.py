"""The trainer end to end on tiny generated data (32×32): learning, logs, checkpoints, exact resume,
device-count invariance, bad data and non-finite losses."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
import pytest
from PIL import Image

from configs import default
from rockir_jax.training import device_layout
from rockir_jax.training import trainer as train
from rockir_jax.training.checkpoint import Checkpointer, restore_variables

SIZE = 32
RESERVOIRS = {"AAA": (0.10, 5.0), "BBB": (0.20, 300.0), "CCC": (0.30, 8000.0)}


def _slice(reservoir: int, sample: int, rng: np.random.Generator) -> np.ndarray:
    """Reservoirs differ in brightness, samples in stripe frequency: a learnable toy."""
    x = np.mgrid[0:SIZE, 0:SIZE][1]
    stripes = np.sin(2 * np.pi * (sample + 1) * (x + rng.integers(SIZE)) / SIZE)
    pixels = 60 + 60 * reservoir + 30 * stripes + rng.normal(0, 8, (SIZE, SIZE))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def make_toy_dataset(root: Path, with_val: bool = True, slices: int = 4) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    splits = {"train": (1, 2), "val": (3,)} if with_val else {"train": (1, 2)}
    for r, (reservoir, (porosity, permeability)) in enumerate(RESERVOIRS.items()):
        for split, samples in splits.items():
            for s in samples:
                name = f"{reservoir}S0{s}"
                (root / split / name).mkdir(parents=True)
                for k in range(slices):
                    Image.fromarray(_slice(r, s, rng)).save(root / split / name / f"{name}_slice{k}.png")
                rows.append(
                    {
                        "Created_label": name,
                        "Porosity": porosity + 0.01 * s,
                        "Permeability": permeability * (1 + 0.3 * s),
                        "Pixelsize": 2.0,
                    }
                )
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def tiny_config(root: Path, cache: Path, **overrides):
    config = default.get_config()
    config.image_size = SIZE
    config.global_batch_size = 8
    # Larger rates make this toy's first steps chaotic: float32 summation-order differences between
    # 1 and 8 devices would then grow into visibly different losses.
    config.learning_rate = 1e-4
    config.data.root = str(root)
    config.data.metadata = str(root / "metadata.csv")
    config.data.cache_dir = str(cache)
    config.log_every_steps = 1
    config.eval_batch_size = 16
    config.eval_pair_batches = 1
    config.checkpoint_every_steps = 2
    config.keep_checkpoints = 2
    # One device keeps these runs fast; test_eight_devices_train_like_one covers the sharded path.
    config.num_devices = 1
    # These tests are about the trainer. Direct convolutions compile a train step in two thirds of the
    # time Winograd's transforms take; test_winograd and test_dsnn_branch_parallel cover those.
    config.conv_algorithm = "direct"
    for key, value in overrides.items():
        config[key] = value
    return config


def read_metrics(workdir: Path, split: str) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def final_state(workdir: Path):
    """Everything the latest checkpoint holds: step, params, batch_stats and optimiser state."""
    checkpointer = Checkpointer(workdir / "checkpoints")
    step = checkpointer.latest_step()
    restored = checkpointer.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))[
        "state"
    ]
    checkpointer.close()
    return restored


@pytest.fixture(scope="module")
def toy_without_val(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy_no_val"), with_val=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_training_learns_logs_and_keeps_checkpoints(tmp_path, cache):
    root = make_toy_dataset(tmp_path / "toy")
    workdir = tmp_path / "run"
    config = tiny_config(root, cache, num_train_steps=30, eval_every_steps=30, checkpoint_every_steps=10)
    train.train_and_evaluate(config, workdir)

    losses = [r["loss"] for r in read_metrics(workdir, "train")]
    assert len(losses) == 30
    # From torch's initialisation the toy loss falls by about a quarter in 30 steps.
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5])
    val = read_metrics(workdir, "val")
    assert [r["step"] for r in val] == [0, 30]
    assert val[-1]["loss"] < val[0]["loss"]
    assert val[-1]["reservoir/map@10"] >= val[0]["reservoir/map@10"]
    assert {"sample/map@10", "metadata/porosity_mae", "metadata/log10_permeability_rmse"} <= set(val[-1])
    assert (workdir / "curves.png").stat().st_size > 10_000
    assert json.loads((workdir / "config.json").read_text())["image_size"] == SIZE
    # Latest two (20, 30) kept; 10 had no metrics and is gone; 30 is also the best.
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [20, 30]


def _interrupt_after(monkeypatch, calls: int, module=train.step_lib, factory="make_train_step"):
    """Makes the train step built by ``module.factory`` raise on its ``calls + 1``-th call."""
    make_train_step = getattr(module, factory)

    def interrupted(*args, **kwargs):
        train_step = make_train_step(*args, **kwargs)
        count = 0

        def step(*a):
            nonlocal count
            count += 1
            if count > calls:
                raise RuntimeError("simulated crash")
            return train_step(*a)

        return step

    monkeypatch.setattr(module, factory, interrupted)


def _assert_trees_equal(a, b):
    flat_a, flat_b = jax.tree.leaves_with_path(a), jax.tree.leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def uninterrupted(toy_without_val, cache, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    train.train_and_evaluate(tiny_config(toy_without_val, cache, num_train_steps=6), workdir)
    return workdir


def test_resume_after_crash_is_bit_identical(toy_without_val, cache, uninterrupted, tmp_path, monkeypatch):
    config = tiny_config(toy_without_val, cache, num_train_steps=6)
    workdir = tmp_path / "crashed"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 5)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train.train_and_evaluate(config, workdir)
    assert Checkpointer(workdir / "checkpoints").latest_step() == 4
    # A write cut off mid-way leaves only a temporary directory, which resume must ignore.
    (workdir / "checkpoints" / "6.orbax-checkpoint-tmp-1234").mkdir()
    train.train_and_evaluate(config, workdir)
    _assert_trees_equal(final_state(workdir), final_state(uninterrupted))
    steps = [r["step"] for r in read_metrics(workdir, "train")]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_after_sigkill_is_bit_identical(toy_without_val, cache, uninterrupted, tmp_path):
    workdir = tmp_path / "killed"
    overrides = {
        "image_size": SIZE,
        "global_batch_size": 8,
        "learning_rate": 1e-4,
        "num_train_steps": 6,
        "log_every_steps": 1,
        "checkpoint_every_steps": 2,
        "keep_checkpoints": 2,
        "num_devices": 1,
        "conv_algorithm": "direct",  # as tiny_config
        "data.root": toy_without_val,
        "data.metadata": toy_without_val / "metadata.csv",
        "data.cache_dir": cache,
    }
    command = [sys.executable, "-m", "rockir_jax.train", "--config", "configs/default.py"]
    command += ["--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in overrides.items()]
    process = subprocess.Popen(command, cwd=Path(__file__).parents[1], env=os.environ.copy())
    deadline = time.monotonic() + 240
    while not (workdir / "checkpoints" / "2").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 4 minutes"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    train.train_and_evaluate(tiny_config(toy_without_val, cache, num_train_steps=6), workdir)
    _assert_trees_equal(final_state(workdir), final_state(uninterrupted))


def test_branch_parallel_run_checkpoints_the_model_layout_and_resumes_bit_identical(
    toy_without_val, cache, tmp_path, monkeypatch
):
    # With a moving average of the weights: it is checkpointed, resumed and what evaluation reads.
    config = tiny_config(toy_without_val, cache, num_train_steps=4, num_devices=2, ema_decay=0.9)
    assert config.branch_parallel
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    train.train_and_evaluate(config, whole)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 3, module=device_layout, factory="make_branch_train_step")
        with pytest.raises(RuntimeError, match="simulated crash"):
            train.train_and_evaluate(config, crashed)
    assert Checkpointer(crashed / "checkpoints").latest_step() == 2
    train.train_and_evaluate(config, crashed)
    state = final_state(whole)
    assert {"image_backbone", "rock_backbone", "head", "regression"} == set(state["params"])
    _assert_trees_equal(final_state(crashed), state)
    evaluated, _ = restore_variables(whole / "checkpoints", step=4)
    _assert_trees_equal(evaluated["params"], state["ema_params"])
    kernel = lambda params: np.asarray(params["rock_backbone"]["conv1"]["kernel"])
    assert not np.array_equal(kernel(state["ema_params"]), kernel(state["params"]))


@pytest.mark.slow
def test_eight_devices_train_like_one(toy_without_val, cache, tmp_path):
    assert jax.device_count() == 8
    losses = {}
    for devices in (1, 8):
        workdir = tmp_path / f"devices{devices}"
        config = tiny_config(toy_without_val, cache, num_train_steps=3, num_devices=devices)
        train.train_and_evaluate(config, workdir)
        losses[devices] = [r["loss"] for r in read_metrics(workdir, "train")]
    # Step 1 runs on identical parameters. Later steps follow Adam updates, which scale each gradient
    # element to about ±lr, so elements whose gradients are at float32 rounding level may move
    # differently under the two summation orders: close, not identical.
    np.testing.assert_allclose(losses[8][0], losses[1][0], rtol=1e-5)
    np.testing.assert_allclose(losses[8], losses[1], rtol=1e-3)


def test_non_finite_loss_stops_before_checkpointing(toy_without_val, cache, tmp_path, monkeypatch):
    shard_batch = train.sharding.shard_batch
    calls = 0

    def poisoned(batch, mesh):
        nonlocal calls
        calls += 1
        if calls == 3:
            batch["image0"][0, 0, 0, 0] = np.nan
        return shard_batch(batch, mesh)

    monkeypatch.setattr(train.sharding, "shard_batch", poisoned)
    workdir = tmp_path / "nan"
    config = tiny_config(toy_without_val, cache, num_train_steps=6, checkpoint_every_steps=1)
    with pytest.raises(
        train.NonFiniteLossError, match=r"non-finite loss .* at step 3.*latest checkpoint is step 2"
    ):
        train.train_and_evaluate(config, workdir)
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [1, 2]


def test_command_line_overrides_and_bad_data_refusal(tmp_path):
    root = make_toy_dataset(tmp_path / "bad", with_val=False, slices=2)
    (root / "train" / "AAAS01" / "AAAS01_slice0.png").write_bytes(b"not a png")
    csv = pd.read_csv(root / "metadata.csv")
    csv.loc[csv.Created_label == "BBBS02", "Permeability"] = -1.0
    csv.to_csv(root / "metadata.csv", index=False)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "rockir_jax.train",
            "--config",
            "configs/default.py",
            "--workdir",
            str(tmp_path / "run"),
            f"--config.data.root={root}",
            f"--config.data.metadata={root / 'metadata.csv'}",
            f"--config.data.cache_dir={tmp_path}",
        ],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "AAAS01_slice0.png" in result.stderr
    assert "BBBS02" in result.stderr and "ermeability" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_console_has_no_library_info_lines_and_the_log_file_has_them(toy_without_val, cache, tmp_path):
    workdir = tmp_path / "run"
    overrides = {
        "image_size": SIZE,
        "global_batch_size": 8,
        "num_train_steps": 2,
        "checkpoint_every_steps": 1,
        "num_devices": 1,
        "conv_algorithm": "direct",
        "data.root": toy_without_val,
        "data.metadata": toy_without_val / "metadata.csv",
        "data.cache_dir": tmp_path / "cache",  # a fresh build: TFDS has its say too
    }
    command = [sys.executable, "-m", "rockir_jax.train", "--config", "configs/default.py"]
    command += ["--workdir", str(workdir)] + [f"--config.{k}={v}" for k, v in overrides.items()]
    result = subprocess.run(
        command, cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # Progress bars redraw with carriage returns; every piece between them is a line of its own.
    console = [line for line in re.split(r"[\r\n]+", result.stdout + result.stderr) if line.strip()]
    library = re.compile(r"^[IWE]\d{4} |INFO:|WARNING:absl|Downloading and preparing|checkpoint_manager")
    assert not [line for line in console if library.search(line)], console
    assert any(line.startswith("training on 1 devices") for line in console), console
    assert any(line.startswith("done: ") for line in console), console
    logged = (workdir / "log.txt").read_text()
    assert "training on 1 devices" in logged and "CheckpointManager" in logged


def test_uneven_global_batch_is_refused(toy_without_val, cache, tmp_path):
    # With num_devices=0 training would take the 6 of 8 devices that split 12 pairs; asking for 8 is refused.
    with pytest.raises(ValueError, match="global_batch_size=12 does not divide evenly over 8 devices"):
        config = tiny_config(toy_without_val, cache, global_batch_size=12, num_devices=8)
        train.train_and_evaluate(config, tmp_path)


def test_length_in_epochs_of_the_data_set():
    """The original trains for epochs of len(images) pairs: 1000 epochs of 100 images in batches of 64
    are ceil(100000 / 64) steps, a checkpoint every 10 epochs ceil(1000 / 64) steps."""
    config = default.get_config()
    config.global_batch_size = 64
    assert train.training_length(config, 100) == (config.num_train_steps, config.checkpoint_every_steps)
    config.num_epochs, config.checkpoint_every_epochs = 1000, 10
    assert train.training_length(config, 100) == (1563, 16)
    config.checkpoint_every_epochs = 0
    assert train.training_length(config, 100) == (1563, config.checkpoint_every_steps)


def test_the_original_nine_slice_form_trains_validates_evaluates_and_searches(tmp_path, capsys):
    """The original's own data: 9 slices of 3 samples, a slice-level split with 3 in val. Validation
    ranks 8 images, fewer than the default retrieval_k of 10: k is capped everywhere, with a note."""
    from rockir_jax.cli import evaluate, search

    root, rng, rows = tmp_path / "nine", np.random.default_rng(4), []
    for r, (reservoir, (porosity, permeability)) in enumerate(RESERVOIRS.items()):
        name = f"{reservoir}S01"
        for k in range(3):
            folder = root / ("val" if k == 2 else "train") / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_slice(r, 1, rng)).save(folder / f"{name}_slice{k}.png")
        rows.append(
            {"Created_label": name, "Porosity": porosity, "Permeability": permeability, "Pixelsize": 2.0}
        )
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    config = tiny_config(root, tmp_path / "cache", num_train_steps=2, eval_every_steps=2)
    assert config.retrieval_k == 10
    workdir = tmp_path / "run"
    with pytest.warns(UserWarning, match="slice-level split"):
        train.train_and_evaluate(config, workdir)
    validation = read_metrics(workdir, "val")[-1]
    assert "reservoir/map@8" in validation and "reservoir/map@10" not in validation
    _, best = restore_variables(workdir / "checkpoints")
    assert best == 2  # the best checkpoint was chosen by the capped metric
    out = tmp_path / "eval"
    csv = str(root / "metadata.csv")
    evaluate.main(["--workdir", str(workdir), "--db", str(root), "--split", "all",
                   "--metadata", csv, "--out", str(out), "--figures", "1"])  # fmt: skip
    assert json.loads((out / "metrics.json").read_text())["k"] == 8
    query = root / "val" / "AAAS01" / "AAAS01_slice2.png"
    search.main(["--workdir", str(workdir), "--db", str(out / "index"), "--query", str(query), "-k", "10"])
    hits = [line for line in capsys.readouterr().out.splitlines() if re.match(r"^\s*\d+\.? ", line)]
    assert len(hits) == 8, hits

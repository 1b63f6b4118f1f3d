"""Real multi-process runs: 2 processes × 2 CPU devices over loopback against 1 process × 4 devices.

From an empty data cache the two processes build it once and train like one process; a relaunch
resumes; a killed process stops its peer; a bad data set is reported once; a multi-process evaluation
writes what a single process writes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd
import pytest
from test_evaluate import make_rocks
from test_train import make_toy_dataset

from rockir_jax.local_processes import process_environments
from rockir_jax.sharding import host_restore_args

REPO = Path(__file__).parents[1]
TIMEOUT = 1800  # a hung run fails the test instead of the suite (a loaded 2-core host compiles slowly)


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> dict[str, str]:
    """The children's environment: no forced device count, CPU, a compilation cache they share (the
    session's, from conftest.py)."""
    env = {key: value for key, value in os.environ.items() if key not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    return env | {
        "JAX_PLATFORMS": "cpu",
        "JAX_COMPILATION_CACHE_DIR": os.environ.get("JAX_COMPILATION_CACHE_DIR")
        or str(tmp_path_factory.mktemp("xla")),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
    }


def two_processes(environment: dict[str, str]) -> list[dict[str, str]]:
    return process_environments(2, cpu_devices=2, base=environment)


def one_process(environment: dict[str, str]) -> dict[str, str]:
    return environment | {"JAX_NUM_CPU_DEVICES": "4"}


def train_command(root: Path, cache: Path, workdir: Path, steps: int) -> list[str]:
    """A DSNN (branch parallel over the 4 devices) at 32², checkpoints every 2 steps, validation at the
    first and the last step."""
    return [
        sys.executable,
        "-m",
        "rockir_jax.train",
        f"--config={REPO / 'configs' / 'default.py'}",
        f"--workdir={workdir}",
        f"--config.data.root={root}",
        f"--config.data.metadata={root / 'metadata.csv'}",
        f"--config.data.cache_dir={cache}",
        "--config.image_size=32",
        "--config.global_batch_size=8",
        "--config.learning_rate=1e-4",
        # Runs of 4 and 6 steps are compared at step 4: a schedule over the run's length would differ.
        "--config.warmup_steps=0",
        "--config.learning_rate_decay=constant",
        "--config.conv_algorithm=direct",
        f"--config.num_train_steps={steps}",
        "--config.checkpoint_every_steps=2",
        "--config.keep_checkpoints=3",
        "--config.log_every_steps=1",
        "--config.eval_batch_size=16",
        "--config.eval_pair_batches=1",
    ]


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path) -> str:
    process.wait(timeout=TIMEOUT)
    output = log.read_text()
    assert process.returncode == 0, output[-3000:]
    return output


def checkpoint(workdir: Path, step: int) -> dict:
    """The train state saved at ``step``, as host numpy arrays (whatever devices wrote it)."""
    assert (workdir / "checkpoints" / str(step)).is_dir(), sorted((workdir / "checkpoints").iterdir())
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    handlers = {"state": ocp.PyTreeCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
    with ocp.CheckpointManager(workdir / "checkpoints", options=options, item_handlers=handlers) as manager:
        saved = manager.item_metadata(step)["state"].tree
        args = ocp.args.PyTreeRestore(item=saved, restore_args=host_restore_args(saved))
        return manager.restore(step, args=ocp.args.Composite(state=args))["state"]


def validation(workdir: Path) -> list[dict]:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record["split"] == "val"]


def assert_bitwise_equal(actual: dict, expected: dict) -> None:
    flat_actual = dict(_flatten(actual))
    flat_expected = dict(_flatten(expected))
    assert flat_actual.keys() == flat_expected.keys()
    for key, value in flat_expected.items():
        np.testing.assert_array_equal(flat_actual[key], value, err_msg=key, strict=True)


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _flatten(value, f"{prefix}/{key}")
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from _flatten(value, f"{prefix}/{i}")
    else:
        yield prefix, np.asarray(tree)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module")
def reference(toy, environment, tmp_path_factory):
    """1 process × 4 devices, 6 steps uninterrupted (started here, awaited by the tests that use it)."""
    workdir = tmp_path_factory.mktemp("one") / "run"
    log = workdir.parent / "log.txt"
    process = start(train_command(toy, workdir.parent / "cache", workdir, 6), one_process(environment), log)
    return workdir, process, log


@pytest.mark.slow
def test_two_processes_train_like_one_resume_and_stop_when_a_peer_dies(toy, environment, reference, tmp_path):
    workdir, cache = tmp_path / "run", tmp_path / "cache"
    logs = [tmp_path / f"log{rank}.txt" for rank in range(2)]

    # From an empty cache: both processes want to build it; one does, the other waits or finds it built.
    command = train_command(toy, cache, workdir, 4)
    ranks = [start(command, env, log) for env, log in zip(two_processes(environment), logs, strict=True)]
    outputs = [finish(process, log) for process, log in zip(ranks, logs, strict=True)]
    assert len(list(cache.glob("*/rockir_images/1.0.0"))) == 1
    # Two builds would have collided in TFDS's final rename (the failure this lock prevents); process 1
    # logs warnings only, so its build is not announced.
    assert sum(output.count("building the image cache") for output in outputs) <= 1
    assert "train:" not in outputs[1]  # no progress bar but process 0's

    reference_dir, reference_run, reference_log = reference
    finish(reference_run, reference_log)
    assert_bitwise_equal(checkpoint(workdir, 4), checkpoint(reference_dir, 4))
    # Validation embeds and searches over both processes' devices, as one process does over its own.
    # (the validation loss's mean over devices is summed in another order: equal to float rounding)
    ours, theirs = validation(workdir)[0], validation(reference_dir)[0]
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        loss = isinstance(value, float) and key.startswith("loss")
        assert ours[key] == (pytest.approx(value, rel=1e-6) if loss else value), key

    # Relaunched for longer, the run resumes from step 4; process 1 is killed once it has saved step 6.
    command = train_command(toy, cache, workdir, 1000)
    ranks = [start(command, env, log) for env, log in zip(two_processes(environment), logs, strict=True)]
    while not (workdir / "checkpoints" / "6").is_dir():
        assert ranks[0].poll() is None and ranks[1].poll() is None, logs[0].read_text()[-3000:]
        time.sleep(1)
    ranks[1].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    ranks[0].wait(timeout=TIMEOUT)
    assert time.monotonic() - killed < 120
    assert ranks[0].returncode != 0
    output = logs[0].read_text()
    assert "The following tasks are unhealthy (stopped sending heartbeats):\n1" in output, output[-3000:]
    assert_bitwise_equal(checkpoint(workdir, 6), checkpoint(reference_dir, 6))


def test_a_bad_data_set_is_reported_once_and_every_process_exits(environment, tmp_path):
    root = make_toy_dataset(tmp_path / "bad", with_val=False, slices=2)
    (root / "train" / "AAAS01" / "AAAS01_slice0.png").write_bytes(b"not a png")
    command = train_command(root, tmp_path / "cache", tmp_path / "run", 2)
    logs = [tmp_path / f"log{rank}.txt" for rank in range(2)]
    ranks = [start(command, env, log) for env, log in zip(two_processes(environment), logs, strict=True)]
    for process in ranks:
        process.wait(timeout=TIMEOUT)
    outputs = [log.read_text() for log in logs]
    assert [process.returncode for process in ranks] == [2, 2], outputs
    assert "AAAS01_slice0.png" in outputs[0]
    assert "AAAS01_slice0.png" not in outputs[1]
    assert "[process 1] error: the data set is not usable (process 0 reports why)" in outputs[1]


def test_two_processes_evaluate_like_one(environment, tmp_path):
    csv = make_rocks(tmp_path / "rocks", samples_per_reservoir=3)
    db = tmp_path / "rocks"
    command = [
        sys.executable,
        "-m",
        "rockir_jax.cli.evaluate",
        "--model=vanilla",
        "--backbone=resnet18",
        "--image-size=32",
        f"--db={db}",
        "--split=train",
        f"--metadata={csv}",
        "--batch-size=8",
        "--figures=1",
        "-k=3",
    ]
    one = tmp_path / "one"
    single = start([*command, f"--out={one}"], one_process(environment), tmp_path / "one.txt")
    two = tmp_path / "two"
    logs = [tmp_path / f"log{rank}.txt" for rank in range(2)]
    ranks = [
        start([*command, f"--out={two}"], env, log)
        for env, log in zip(two_processes(environment), logs, strict=True)
    ]
    finish(single, tmp_path / "one.txt")
    outputs = [finish(process, log) for process, log in zip(ranks, logs, strict=True)]
    assert "wrote" in outputs[0] and "wrote" not in outputs[1]

    expected = json.loads((one / "metrics.json").read_text())
    actual = json.loads((two / "metrics.json").read_text())
    assert actual == expected
    assert (two / "metrics.md").read_text() == (one / "metrics.md").read_text()
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    with np.load(one / "index" / "arrays.npz") as a, np.load(two / "index" / "arrays.npz") as b:
        assert a.files == b.files
        for name in a.files:
            np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    assert len(pd.unique(pd.Series(expected["metrics"]))) > 1  # a real evaluation, not all zeros

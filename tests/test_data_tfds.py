"""Tests for rockir_jax.data.tfds_builder: the ArrayRecord cache's contents and rebuilds."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from rockir_jax.data.metadata import index_dataset
from rockir_jax.data.tfds_builder import _exclusive, build_image_cache, fingerprint, load_split, read_tables
from rockir_jax.images import read_image

LAYOUT = {"train": {"AAA001": 3, "BBB001": 2}, "db_test": {"CCC001": 2}}


def make_dataset(root: Path, layout: dict[str, dict[str, int]] = LAYOUT) -> Path:
    rng = np.random.default_rng(1)
    rows = []
    for split, samples in layout.items():
        for sample, n in samples.items():
            folder = root / split if split == "db_test" else root / split / sample
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                pixels = rng.integers(0, 256, (40, 40), dtype=np.uint8)
                Image.fromarray(pixels, "L").save(folder / f"{sample}_slice{k}.png")
            rows.append(
                {"Created_label": sample, "Porosity": 0.1 * len(rows) + 0.1,
                 "Permeability": 10.0 ** (len(rows) + 1), "Pixelsize": 1.0}
            )  # fmt: skip
    csv = root / "metadata.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def array_record_mtimes(path: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in path.glob("*.array_record*")}


def test_records_match_the_index(tmp_path):
    csv = make_dataset(tmp_path / "data")
    index = index_dataset(tmp_path / "data", csv)
    path = build_image_cache(index, 32, tmp_path / "cache")
    for split, table in index.splits.items():
        source = load_split(path, split)
        assert len(source) == len(table) and source.image_size == 32
        np.testing.assert_array_equal(source.sample_ids, table.sample_ids)
        np.testing.assert_array_equal(source.reservoir_ids, table.reservoir_ids)
        np.testing.assert_array_equal(source.targets, table.targets)
        for i in range(len(table)):
            record = source.records[i]
            assert int(record["index"]) == i  # stored in table order, not shuffled
            assert int(record["sample_id"]) == table.sample_ids[i]
            assert int(record["reservoir_id"]) == table.reservoir_ids[i]
            np.testing.assert_array_equal(record["targets"], table.targets[i])
            np.testing.assert_array_equal(record["image"], read_image(table.paths[i], 32))
    tables = read_tables(path)
    assert tables["samples"] == list(index.samples)
    assert tables["splits"]["train"]["paths"] == list(index.splits["train"].paths)


def test_cache_reused_and_rebuilt_on_changes(tmp_path):
    root = tmp_path / "data"
    csv = make_dataset(root)
    cache = tmp_path / "cache"
    first = build_image_cache(index_dataset(root, csv), 32, cache)
    written = array_record_mtimes(first)
    assert written

    # Same source, same size: same directory, files untouched.
    assert build_image_cache(index_dataset(root, csv), 32, cache) == first
    assert array_record_mtimes(first) == written

    # Another image size: another build.
    bigger = build_image_cache(index_dataset(root, csv), 128, cache)
    assert bigger != first
    assert load_split(bigger, "train").records[0]["image"].shape == (128, 128, 3)

    # An image touched (same bytes, new mtime): rebuilt.
    image = root / "train" / "AAA001" / "AAA001_slice0.png"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    touched = build_image_cache(index_dataset(root, csv), 32, cache)
    assert touched not in (first, bigger)

    # CSV content changed: rebuilt, with the new targets.
    frame = pd.read_csv(csv)
    frame.loc[frame.Created_label == "AAA001", "Porosity"] = 0.55
    frame.to_csv(csv, index=False)
    changed = build_image_cache(index_dataset(root, csv), 32, cache)
    assert changed not in (first, bigger, touched)
    assert load_split(changed, "train").records[0]["targets"][0] == np.float32(0.55)
    assert load_split(touched, "train").records[0]["targets"][0] == np.float32(0.1)


def test_cache_is_the_same_for_any_worker_count(tmp_path):
    # 70 images: three chunks, so two workers both decode.
    layout = {"train": {"AAA001": 30, "BBB001": 20}, "db_test": {"CCC001": 20}}
    index = index_dataset(tmp_path / "data", make_dataset(tmp_path / "data", layout))
    built = {
        workers: build_image_cache(index, 24, tmp_path / f"cache{workers}", workers=workers)
        for workers in (1, 2)
    }
    files = {
        w: sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file()) for w, path in built.items()
    }
    assert files[1] == files[2] and any(
        p.name.startswith("rockir_images-train.array_record") for p in files[1]
    )
    for name in files[1]:
        assert (built[1] / name).read_bytes() == (built[2] / name).read_bytes(), name
    # And the records hold what a plain read gives (the test above checks the single-process path).
    source = load_split(built[2], "train")
    for i in (0, 31, 32, 49):
        np.testing.assert_array_equal(
            source.records[i]["image"], read_image(index.splits["train"].paths[i], 24)
        )


def _lock_of(index, cache: Path) -> Path:
    return cache / f"32px-{fingerprint(index, 32)[:16]}.lock"


def test_a_build_waits_for_the_lock_holder(tmp_path):
    csv = make_dataset(tmp_path / "data")
    index = index_dataset(tmp_path / "data", csv)
    cache = tmp_path / "cache"
    built: list[Path] = []
    with _exclusive(_lock_of(index, cache)):  # another process building
        waiter = threading.Thread(target=lambda: built.append(build_image_cache(index, 32, cache)))
        waiter.start()
        waiter.join(timeout=3)
        assert waiter.is_alive() and not built and not list(cache.glob("*/rockir_images"))
    waiter.join()
    assert len(built) == 1 and (built[0] / "rockir_tables.json").is_file()


def test_a_killed_builder_leaves_no_lock_behind(tmp_path):
    csv = make_dataset(tmp_path / "data")
    index = index_dataset(tmp_path / "data", csv)
    lock = _lock_of(index, tmp_path / "cache")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    path = build_image_cache(index, 32, tmp_path / "cache")  # would wait forever on a stale lock
    assert len(load_split(path, "train")) == 5


HOLD_LOCK = """
import fcntl, sys, time, pathlib
lock = pathlib.Path(sys.argv[1]); lock.parent.mkdir(parents=True, exist_ok=True)
f = lock.open("a"); fcntl.flock(f, fcntl.LOCK_EX); print("locked", flush=True); time.sleep(600)
"""


UNGUARDED_SCRIPT = """
import sys
from rockir_jax.data.metadata import index_dataset
from rockir_jax.data.tfds_builder import build_image_cache
print("top level ran", flush=True)
index = index_dataset(sys.argv[1], sys.argv[1] + "/metadata.csv")
build_image_cache(index, 24, sys.argv[2], workers=2)
"""


def test_worker_processes_do_not_rerun_the_callers_script(tmp_path):
    # spawn and forkserver re-run __main__ in every worker unless told not to: a script without an
    # `if __name__ == "__main__"` guard would build again in each worker, and JAX commands would
    # import JAX in each.
    layout = {"train": {"AAA001": 40, "BBB001": 30}}
    make_dataset(tmp_path / "data", layout)
    script = tmp_path / "build.py"
    script.write_text(UNGUARDED_SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "data"), str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("top level ran") == 1
    (built,) = (tmp_path / "cache").glob("24px-*/rockir_images/1.0.0")
    assert len(list(built.glob("*.array_record-*"))) == 3  # 70 images in shards of 32: both workers wrote

"""Smoke test of the benchmark at tiny sizes: the table's structure and top-k agreement, never timings."""

import importlib.util
import inspect

import benchmark_lib as benchmark
import numpy as np
import pytest

HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "torchvision"))
HAS_FAISS = importlib.util.find_spec("faiss") is not None


@pytest.fixture(scope="module")
def rows():
    config = benchmark.quick_config(
        image_sizes=(32,),
        batch=8,
        repeats=2,
        search_repeats=2,
        queries=(10, 1),
        database=2_000,
        dim=64,
        embed_batch=8,
        pipeline_batches=2,
        pipeline_workers=(0,),
        cache_workers=(1, 2),
        cache_repeats=1,
        cache_slices=40,
        cache_slice_size=48,
        num_devices=2,
    )
    return benchmark.run(config)


@pytest.mark.slow
def test_rows_cover_every_benchmark(rows):
    assert [(r.benchmark, r.setting.split(",")[0]) for r in rows] == [
        ("train step", "32²"),
        ("train step", "32²"),
        ("embed", "32²"),
        ("pipeline", "32²"),
        ("cache build", "bundled 128² PNG → 32²"),
        ("cache build", "bundled 128² PNG → 32²"),
        ("cache build", "48² 16-bit TIFF → 32²"),
        ("cache build", "48² 16-bit TIFF → 32²"),
        ("search", "10 queries"),
        ("search", "1 queries"),
    ]
    assert [r.setting.split("float32, ")[1] for r in rows[:2]] == [
        "branch parallel on 2",
        "data parallel on 2",
    ]
    assert all(r.ours > 0 for r in rows)
    assert {r.unit for r in rows} == {"pairs/s", "images/s", "queries/s"}
    pipeline = rows[3]
    assert pipeline.reference_value == rows[0].ours
    assert [r.setting.split(", ")[-1] for r in rows[4:8]] == ["1 worker", "2 workers"] * 2
    assert rows[4].reference_value == rows[5].reference_value == rows[4].ours
    assert rows[6].reference_value == rows[7].reference_value == rows[6].ours
    assert rows[6].setting.split(", ")[1] == "40 images"


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
@pytest.mark.slow
def test_train_step_has_pytorch_reference(rows):
    for train in rows[:2]:
        assert train.reference_value > 0
        assert train.ratio == pytest.approx(train.ours / train.reference_value)
        assert "per-round ratio quartiles" in train.note


def test_trial_names_tell_algorithms_apart_only_when_several():
    assert benchmark.trial_name("branch parallel", "auto", ("auto",)) == "branch parallel"
    assert benchmark.trial_name("data parallel", "direct", ("auto", "direct")) == (
        "data parallel, direct convolutions"
    )


def test_round_ratio_quartiles_pair_each_round():
    # Rounds in which ours took 1, 2, 4, 8 s and the reference 2, 2, 2, 2 s: ratios 2, 1, 0.5, 0.25.
    ratios = np.array([2.0, 1.0, 0.5, 0.25])
    expected = np.percentile(ratios, [25, 75])  # numpy's default is the inclusive (linear) rule
    got = benchmark.round_ratio_quartiles([1.0, 2.0, 4.0, 8.0], [2.0] * 4)
    np.testing.assert_allclose(got, expected)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_pytorch_reference_trains_in_bfloat16_autocast():
    """The GPU benchmark's reference path, run on the CPU: one autocast step updates float32 parameters."""
    import torch

    assert benchmark.torch_device() == "cpu"  # JAX runs on the CPU here
    trial = benchmark.torch_train_trial(benchmark.pair_batch(2, 32), threads=1, dtype="bfloat16")
    model = inspect.getclosurevars(trial).nonlocals["model"]
    before = [p.detach().clone() for p in model.parameters()]
    trial()
    after = list(model.parameters())
    assert all(p.dtype == torch.float32 for p in after)
    assert all(torch.isfinite(p).all() for p in after)
    # Every parameter with a gradient moved (a gate ReLU that is off for the whole batch leaves its
    # layer's gradient at zero, and weight decay alone is below float32's resolution).
    changed = [not torch.equal(a, b) for a, b in zip(after, before, strict=True)]
    has_gradient = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in after]
    assert changed == has_gradient and sum(changed) > 0.9 * len(before)


@pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")
@pytest.mark.slow
def test_search_top_k_sets_match_faiss(rows):
    for row in rows[8:]:
        assert row.reference.startswith("FAISS best")
        assert row.agreement == 1.0


@pytest.mark.slow
def test_table_and_report(rows, tmp_path):
    table = benchmark.format_table(rows)
    lines = table.splitlines()
    assert len(lines) == len(rows) + 2
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    info = benchmark.machine_info()
    out = tmp_path / "BENCHMARKS.md"
    for _ in range(2):
        benchmark.append_report(out, benchmark.format_report(rows, info, "python scripts/benchmark.py", 1.0))
    text = out.read_text()
    assert text.startswith("# Benchmarks") and text.count("\n## ") == 2
    assert info["device_kind"] in text


@pytest.mark.slow
def test_serve_rows_time_both_orientation_counts():
    config = benchmark.quick_config(
        image_sizes=(32,), serve_database=200, serve_requests=2, serve_clients=2, num_devices=2
    )
    rows = benchmark.serve_rows(config)
    assert [r.setting.split(", ")[3:] for r in rows] == [
        ["1 orientation(s)", "k=10", "1 client(s)"],
        ["1 orientation(s)", "k=10", "2 client(s)"],
        ["8 orientation(s)", "k=10", "1 client(s)"],
        ["8 orientation(s)", "k=10", "2 client(s)"],
    ]
    assert all(r.benchmark == "serve" and r.unit == "ms" and r.ours > 0 for r in rows)


def test_same_sets_fraction_ignores_order():
    a = np.array([[1, 2, 3], [4, 5, 6]])
    assert benchmark.same_sets_fraction(a, a[:, ::-1]) == 1.0
    assert benchmark.same_sets_fraction(a, np.array([[3, 2, 1], [4, 5, 7]])) == 0.5


def test_interleaved_times_alternates():
    calls = []
    times = benchmark.interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, 2)
    assert sorted(calls[:2]) == ["a", "b"] and calls[2:] == ["a", "b", "a", "b"]
    assert [len(v) for v in times.values()] == [2, 2]

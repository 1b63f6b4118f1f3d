"""metrics.jsonl is strict JSON, also for undefined metrics, and still plots; TensorBoard's own reader sees
the same scalars, and a resumed run's steps once."""

import json
import math

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rockir_jax.training.metrics_log import MetricsLog


def _refuse(constant):
    raise ValueError(f"non-JSON constant {constant}")


def _jsonl(log: MetricsLog) -> list[dict]:
    return [json.loads(line, parse_constant=_refuse) for line in log.path.read_text().splitlines()]


def _tensorboard(workdir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in ``workdir``'s event files as TensorBoard's (TensorFlow-free) loader sees it."""
    accumulator = EventAccumulator(str(workdir), size_guidance={"scalars": 0}).Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def _series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """The JSONL records as TensorBoard series (null, an undefined value, read back as NaN)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for name, value in record.items():
            if name not in ("step", "split"):
                series.setdefault(f"{record['split']}/{name}", []).append(
                    (record["step"], math.nan if value is None else value)
                )
    return series


def _assert_same(actual, expected):
    assert sorted(actual) == sorted(expected)
    for tag, points in expected.items():
        steps, values = zip(*points, strict=True)
        assert [step for step, _ in actual[tag]] == list(steps), tag
        # simple_value is float32
        np.testing.assert_allclose([v for _, v in actual[tag]], values, rtol=1e-6, err_msg=tag)


def test_undefined_metrics_are_written_as_null(tmp_path):
    log = MetricsLog(tmp_path)
    log.write(0, "val", {"loss": 1.5, "metadata/log10k_r2": float("nan"), "ratio": float("inf")})
    log.write(1, "train", {"loss/total": 1.25})
    records = _jsonl(log)
    assert records[0] == {"step": 0, "split": "val", "loss": 1.5, "metadata/log10k_r2": None, "ratio": None}
    log.truncate_after(0)
    assert _jsonl(log) == records[:1]
    assert log.plot().exists()


def test_strict_parser_really_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        json.loads('{"x": NaN}', parse_constant=_refuse)


def test_tensorboard_holds_the_jsonl_scalars(tmp_path):
    log = MetricsLog(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing until the first write (processes other than 0)
    log.write(0, "val", {"loss": 0.75, "map@10": 0.5, "metadata/log10k_r2": float("nan")})
    for step in (5, 10):
        log.write(step, "train", {"loss": 1 / step, "loss/fused": 0.1 * step, "learning_rate": 1e-3})
    log.write(10, "val", {"loss": 0.5, "map@10": 0.625, "metadata/log10k_r2": 0.25})
    # on disk before close: a killed run keeps what it wrote
    events = sorted(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1
    expected = _series(_jsonl(log))
    assert expected["val/map@10"] == [(0, 0.5), (10, 0.625)]  # the JSONL names are the tags
    tensorboard = _tensorboard(tmp_path)
    assert math.isnan(tensorboard["val/metadata/log10k_r2"][0][1])
    _assert_same(tensorboard, expected)
    log.close()


def test_a_resumed_run_shows_each_step_once(tmp_path):
    first = MetricsLog(tmp_path)
    first.truncate_after(0)  # what a fresh run does
    for step in range(1, 6):
        first.write(step, "train", {"loss": float(step)})
    first.write(4, "val", {"map@10": 0.5})
    # killed after step 5, resumed from the checkpoint of step 3 in a new process
    resumed = MetricsLog(tmp_path)
    resumed.truncate_after(3)
    assert [r["step"] for r in _jsonl(resumed)] == [1, 2, 3]
    for step in range(4, 7):
        resumed.write(step, "train", {"loss": 10.0 * step})
    resumed.write(6, "val", {"map@10": 0.75})
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2  # event files are never rewritten
    expected = {
        "train/loss": [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)],
        "val/map@10": [(6, 0.75)],  # step 4's value was dropped with the steps after 3
    }
    assert _series(resumed.read()) == expected
    _assert_same(_tensorboard(tmp_path), expected)
    assert resumed.plot().exists()

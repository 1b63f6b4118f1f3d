"""metrics.jsonl is strict JSON, also for undefined metrics, and still plots."""

import json

import pytest

from rockir_jax.training.metrics_log import MetricsLog


def _refuse(constant):
    raise ValueError(f"non-JSON constant {constant}")


def test_undefined_metrics_are_written_as_null(tmp_path):
    log = MetricsLog(tmp_path)
    log.write(0, "val", {"loss": 1.5, "metadata/log10k_r2": float("nan"), "ratio": float("inf")})
    log.write(1, "train", {"loss/total": 1.25})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line, parse_constant=_refuse) for line in lines]
    assert records[0] == {"step": 0, "split": "val", "loss": 1.5, "metadata/log10k_r2": None, "ratio": None}
    log.truncate_after(0)
    assert [
        json.loads(line, parse_constant=_refuse) for line in log.path.read_text().splitlines()
    ] == records[:1]
    assert log.plot().exists()


def test_strict_parser_really_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        json.loads('{"x": NaN}', parse_constant=_refuse)

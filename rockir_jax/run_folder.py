"""A training run's folder: the one place that names the files a run writes and its readers open."""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
LOG_FILE = "log.txt"


def config_path(workdir: str | Path) -> Path:
    """The run's resolved config, written when training starts."""
    return Path(workdir) / CONFIG_FILE


def checkpoints_dir(workdir: str | Path) -> Path:
    """The run's orbax checkpoints, one numbered folder per saved step."""
    return Path(workdir) / CHECKPOINTS_DIR


def holds_checkpoint(workdir: str | Path) -> bool:
    """Whether ``workdir`` is a run with its config and at least one saved step."""
    return config_path(workdir).is_file() and any(checkpoints_dir(workdir).glob("[0-9]*"))

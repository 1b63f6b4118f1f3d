"""A run's metrics through one writer interface: ``metrics.jsonl``, TensorBoard event files, ``curves.png``.

Writers follow clu's ``MetricWriter`` (``write_scalars(step, scalars)`` with ``"<split>/<name>"`` keys,
as flax's examples and big_vision name them), reduced to what a run needs; it is a Protocol here because
``clu.metric_writers`` imports TensorFlow even for its interface (clu 0.0.12). TensorBoard files are
written with tensorboardX (numpy and protobuf only): ``tensorboard --logdir runs/`` shows every workdir as
one run, ``train/…`` and ``val/…`` tags side by side. ``metrics.jsonl`` stays the record that
``curves.png`` and the tests read.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rockir_jax.jsonio import json_line

if TYPE_CHECKING:
    from tensorboardX.event_file_writer import EventsWriter


class MetricWriter(Protocol):
    """One back end of a run's metrics: scalars keyed ``"<split>/<name>"`` at a step, and a resume."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Records ``scalars`` at ``step``; on disk when this returns, so a killed run loses nothing."""

    def truncate_after(self, step: int) -> None:
        """A resumed run continues from ``step``: what was written beyond it is written again."""

    def close(self) -> None:
        """Releases open files; a later write opens them again."""


class JsonlWriter:
    """``{"step", "split", **metrics}`` lines, one per step and split; undefined values (NaN, e.g. R² of
    a constant target) as null."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        records: dict[str, dict[str, Any]] = {}
        for key, value in scalars.items():
            split, _, name = key.partition("/")
            if not name:
                raise ValueError(f"metric {key!r} is not named '<split>/<name>'")
            records.setdefault(split, {"step": step, "split": split})[name] = value
        with self.path.open("a") as f:
            f.writelines(json_line(record) for record in records.values())

    def read(self) -> list[dict]:
        """All records; after a resume, a step logged twice keeps its last record."""
        if not self.path.exists():
            return []
        records = {}
        for line in self.path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[(record["step"], record["split"])] = record
        return sorted(records.values(), key=lambda r: r["step"])

    def truncate_after(self, step: int) -> None:
        """Drops the records beyond ``step``."""
        kept = [r for r in self.read() if r["step"] <= step]
        self.path.write_text("".join(json_line(r) for r in kept))

    def close(self) -> None:
        pass  # every write opens and closes the file


class TensorBoardWriter:
    """TensorBoard event files in ``logdir``, written synchronously (tensorboardX's ``SummaryWriter``
    queues events for a thread that flushes every 2 minutes; its ``EventsWriter`` writes them now).

    The file is opened at the first write, so a process that never writes (not process 0) leaves none;
    tensorboardX is imported then too, as it imports torch where torch is installed (seconds).
    Event files are not edited: after ``truncate_after(step)`` the next write starts a new file, so the
    older files keep the steps after ``step`` on disk and TensorBoard's step handling hides them. The new
    file opens with a restart marker (``SessionLog.START`` at ``step + 1``), at which the Python loader
    (``--load_fast=false``, ``EventAccumulator``) drops every later step; the default Rust loader drops a
    series' later steps when that series is written again at an earlier step, which a resumed run on the
    same schedule does.
    """

    def __init__(self, logdir: str | Path):
        self.logdir = Path(logdir)
        self._events: EventsWriter | None = None
        self._restart_step: int | None = None

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Every real number as a ``simple_value`` (float32; NaN and infinities too); other values are
        skipped. Tags are the keys as given (tensorboardX's ``add_scalar`` would rename ``map@10``)."""
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        values = [
            Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in scalars.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        ]
        if values:
            events = self._open()
            events.write_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
            events.flush()

    def truncate_after(self, step: int) -> None:
        self.close()
        self._restart_step = step + 1

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    def _open(self) -> EventsWriter:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog

        if self._events is None:
            self.logdir.mkdir(parents=True, exist_ok=True)
            # events.out.tfevents.<s>.<host>.<ns>: unique, and in the order written, as TensorBoard reads
            self._events = EventsWriter(str(self.logdir / "events"), f".{time.time_ns()}")
            if self._restart_step is not None:
                start = SessionLog(status=SessionLog.START)
                self._events.write_event(
                    Event(wall_time=time.time(), step=self._restart_step, session_log=start)
                )
        return self._events


class MetricsLog:
    """A run's metrics in ``<workdir>``: ``metrics.jsonl``, TensorBoard event files and ``curves.png``.

    ``write(step, split, metrics)`` goes to every writer in ``writers`` (another back end is one more
    :class:`MetricWriter`); ``plot()`` draws ``curves.png`` from ``metrics.jsonl``.
    """

    def __init__(self, workdir: str | Path):
        workdir = Path(workdir)
        self.jsonl = JsonlWriter(workdir / "metrics.jsonl")
        self.path = self.jsonl.path
        self.tensorboard_dir = workdir
        self.curves_path = workdir / "curves.png"
        self.writers: list[MetricWriter] = [self.jsonl, TensorBoardWriter(self.tensorboard_dir)]

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        """Records ``metrics`` of ``split`` (``"train"``, ``"val"``) at ``step`` in every writer."""
        scalars = {f"{split}/{name}": value for name, value in metrics.items()}
        for writer in self.writers:
            writer.write_scalars(step, scalars)

    def read(self) -> list[dict]:
        """All ``metrics.jsonl`` records; after a resume, a step logged twice keeps its last record."""
        return self.jsonl.read()

    def truncate_after(self, step: int) -> None:
        """A resumed run logs the steps after ``step`` again: every writer forgets them."""
        for writer in self.writers:
            writer.truncate_after(step)

    def close(self) -> None:
        """Closes every writer's files (writes are on disk already; this releases the handles)."""
        for writer in self.writers:
            writer.close()

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def plot(self) -> Path:
        """Loss terms, validation loss, retrieval mAP@k and metadata errors against step."""
        series: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        for record in self.read():
            for name, value in record.items():
                if name not in ("step", "split") and isinstance(value, int | float):
                    series[f"{record['split']}/{name}"]["step"].append(record["step"])
                    series[f"{record['split']}/{name}"]["value"].append(value)
        panels = {
            "training losses": lambda n: n.startswith("train/loss"),
            "validation losses": lambda n: n.startswith("val/loss"),
            "validation retrieval": lambda n: n.startswith("val/") and re.search(r"/map@\d+$", n) is not None,
            "validation metadata": lambda n: n.startswith("val/metadata/"),
        }
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8))
        for ax, (title, belongs) in zip(axes, panels.items(), strict=True):
            for name in sorted(n for n in series if belongs(n)):
                ax.plot(series[name]["step"], series[name]["value"], marker=".", label=name.split("/", 1)[1])
            ax.set_title(title)
            ax.set_xlabel("step")
            if "losses" in title and any(belongs(n) for n in series):
                ax.set_yscale("log")
            if ax.has_data():
                ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(self.curves_path, dpi=100)
        plt.close(fig)
        return self.curves_path

"""A run's metrics: ``metrics.jsonl`` (one JSON object per logged step and split) and ``curves.png``."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from rockir_jax.jsonio import json_line


class MetricsLog:
    """Appends ``{"step", "split", **metrics}`` lines to ``<workdir>/metrics.jsonl`` and plots them."""

    def __init__(self, workdir: str | Path):
        self.path = Path(workdir) / "metrics.jsonl"
        self.curves_path = Path(workdir) / "curves.png"

    def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Appends one record; undefined values (NaN, e.g. R² of a constant target) are written as null."""
        with self.path.open("a") as f:
            f.write(json_line({"step": step, "split": split, **metrics}))

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
        """Drops records beyond ``step``: a resumed run logs those steps again."""
        kept = [r for r in self.read() if r["step"] <= step]
        self.path.write_text("".join(json_line(r) for r in kept))

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

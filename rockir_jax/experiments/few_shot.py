"""Data efficiency: the models trained with 1, 2, 4… labelled samples per reservoir, over seeds, as a
table and a plot of reservoir mAP@k and log10 k R² against that count (``scripts/few_shot.py``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import ml_collections

from rockir_jax.experiments.comparison import compare_models, mean_std_cell
from rockir_jax.jsonio import json_text
from rockir_jax.retrieval.metrics import PER_SAMPLE, metric_key, metric_label

COLUMNS = (
    ("reservoir", "map@{k}"),
    (f"reservoir{PER_SAMPLE}", "map@{k}"),
    ("metadata", "log10_permeability_r2"),
    (f"metadata{PER_SAMPLE}", "log10_permeability_r2"),
)
"""The few-shot table's metrics, (level, name); the plot has one panel per pair."""


def few_shot(
    base: ml_collections.ConfigDict,
    out: Path,
    *,
    counts: Sequence[int],
    seeds: Sequence[int],
    models: Sequence[str],
    reuse: bool = False,
    k: int = 10,
) -> dict[str, Any]:
    """Trains and evaluates ``models`` with ``counts`` labelled samples per reservoir; returns the
    points (count, model, means, standard deviations) and writes the table and the plot."""
    points = []
    for count in counts:
        config = ml_collections.ConfigDict(base.to_dict())
        config.data.train_samples_per_reservoir = count
        table = compare_models(
            config, out / f"{count}_per_reservoir", seeds=seeds, models=models, reuse=reuse, k=k
        )
        for row in table["models"]:
            points.append(
                {
                    "samples_per_reservoir": count,
                    "name": row["name"],
                    "metrics": row["metrics"],
                    "metrics_std": row["metrics_std"],
                }
            )
    result = {"k": k, "seeds": list(seeds), "machine": table["machine"], "points": points}
    out.mkdir(parents=True, exist_ok=True)
    (out / "few_shot.json").write_text(json_text(result))
    (out / "few_shot.md").write_text(few_shot_markdown(result))
    plot_few_shot(result, out / "few_shot.png")
    return result


def few_shot_markdown(result: dict[str, Any]) -> str:
    """The points as a Markdown table, one row per model and count."""
    k = result["k"]
    keys = [metric_key(level, name, k) for level, name in COLUMNS]
    several = len(result["seeds"]) > 1
    lines = [
        "| labelled samples per reservoir | model | "
        + " | ".join(metric_label(key, k) for key in keys)
        + " |",
        "| ---: | --- | " + " | ".join(["---:"] * len(keys)) + " |",
    ]
    for point in sorted(result["points"], key=lambda p: (p["name"], p["samples_per_reservoir"])):
        cells = [str(point["samples_per_reservoir"]), point["name"]]
        cells += [
            mean_std_cell(point["metrics"].get(k_), point["metrics_std"].get(k_), several) for k_ in keys
        ]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = ", ".join(map(str, result["seeds"]))
    return "\n".join(lines) + f"\n\nMean ± standard deviation over seeds {seeds}; {result['machine']}.\n"


def plot_few_shot(result: dict[str, Any], path: Path) -> None:
    """Two panels, reservoir mAP@k and log10 k R², against the count: per slice solid, per sample
    dashed, one colour per model, error bars of one standard deviation."""
    k = result["k"]
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    names = sorted({p["name"] for p in result["points"]})
    for ax, pair in zip(axes, (COLUMNS[:2], COLUMNS[2:]), strict=True):
        for colour, name in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], names, strict=False):
            points = sorted(
                (p for p in result["points"] if p["name"] == name), key=lambda p: p["samples_per_reservoir"]
            )
            for (level, metric), style in zip(pair, ("-", "--"), strict=True):
                key = metric_key(level, metric, k)
                shown = [p for p in points if key in p["metrics"]]
                if not shown:
                    continue
                ax.errorbar(
                    [p["samples_per_reservoir"] for p in shown],
                    [p["metrics"][key] for p in shown],
                    yerr=[p["metrics_std"][key] for p in shown],
                    linestyle=style,
                    marker="o",
                    capsize=3,
                    color=colour,
                    label=f"{name}, {'per sample' if PER_SAMPLE in level else 'per slice'}",
                )
        ax.set_xlabel("labelled samples per reservoir")
        ax.set_ylabel(metric_label(metric_key(*pair[0], k), k))
        ax.set_xticks(sorted({p["samples_per_reservoir"] for p in result["points"]}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.savefig(path, dpi=120)
    plt.close(figure)

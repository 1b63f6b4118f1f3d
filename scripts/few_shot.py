"""Data efficiency: retrieval and permeability against the number of labelled samples per reservoir.

    python scripts/few_shot.py --out runs/few_shot [--config configs/default.py] [--set KEY=VALUE ...] \
        [--samples 1 2 4] \
        [--seeds 0 1 2] [--models DSNN-R18 Siamese-R18 Texture] [--reuse]

For each count N every model trains, with each seed, on only the first N samples (by name) of each
reservoir of the training split (``data.train_samples_per_reservoir``) into ``<out>/<N>_per_reservoir``
(a ``rockir-compare`` output) and is evaluated on the config's ``db_test``. Writes
``<out>/few_shot.md`` (means ± standard deviations), ``<out>/few_shot.json`` and ``<out>/few_shot.png``
(reservoir mAP@k and log10 k R² against N, per slice and per sample).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import ml_collections

from rockir_jax.cli import common
from rockir_jax.cli.compare import MODELS, compare_models, mean_std_cell
from rockir_jax.configuration import load_config, override
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("scripts/few_shot.py", __doc__.splitlines()[0])
    parser.add_argument("--out", type=common.path, required=True, help="output directory")
    parser.add_argument(
        "--config", type=common.path, default=Path("configs/default.py"), help="base config (.py/.json)"
    )
    parser.add_argument(
        "--samples", type=int, nargs="+", default=[1, 2, 4], help="labelled samples per reservoir"
    )
    parser.add_argument(
        "--set",
        dest="assignments",
        action="extend",
        metavar="KEY=VALUE",
        nargs="+",
        default=[],
        help="config values to change, e.g. learning_rate=1e-3 data.augment=dihedral",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=["DSNN-R18", "Siamese-R18"], help="models to train"
    )
    parser.add_argument("--reuse", action="store_true", help="evaluate runs already under <out> as they are")
    parser.add_argument("-k", type=int, default=10, help="cut-off of the @k metrics")
    args: argparse.Namespace = parser.parse_args(argv)

    def body() -> None:
        few_shot(
            override(load_config(args.config), args.assignments),
            args.out,
            counts=args.samples,
            seeds=args.seeds,
            models=args.models,
            reuse=args.reuse,
            k=args.k,
        )
        print((args.out / "few_shot.md").read_text())

    common.run(body, verbose=args.verbose, log_dir=args.out)


if __name__ == "__main__":
    main()

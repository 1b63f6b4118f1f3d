"""Model comparison: DSNN-R18, Siamese-R18 and Siamese-R34 trained, and the baselines, evaluated on one
split over several seeds (``rockir-compare``).

The trained models differ from the base config only in ``model``, ``backbone`` and ``seed``; runs go to
``<out>/runs/<name>/seed<s>``, evaluations (the vanilla and texture baselines' too) to ``<out>/eval``. The
mean and standard deviation of every metric over the seeds go to ``<out>/comparison.md`` and
``<out>/comparison.json``. Details: docs/internals.md.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from rockir_jax import run_folder
from rockir_jax.data.database import DEFAULT_SPLIT, list_images
from rockir_jax.jsonio import json_text
from rockir_jax.retrieval.evaluation import evaluate, report_index
from rockir_jax.retrieval.loading import load_model
from rockir_jax.retrieval.metrics import TABLE_COLUMNS, metric_key, metric_label
from rockir_jax.retrieval.texture import fit_texture_baseline
from rockir_jax.training.trainer import dataset_index, train_and_evaluate


@dataclasses.dataclass(frozen=True)
class Entry:
    """One row of the comparison."""

    name: str
    model: str
    backbone: str


TRAINED = (
    Entry("DSNN-R18", "dsnn", "resnet18"),
    Entry("Siamese-R18", "siamese", "resnet18"),
    Entry("Siamese-R34", "siamese", "resnet34"),
)
VANILLA = Entry("Vanilla-R34", "vanilla", "resnet34")
TEXTURE = Entry("Texture", "texture", "none")
MODELS = tuple(entry.name for entry in (*TRAINED, VANILLA, TEXTURE))
"""Every model's name, in table order."""


def run_config(
    base: ml_collections.ConfigDict,
    entry: Entry,
    pretrained_resnet34: str | Path | None,
    steps: int | None,
    seed: int | None = None,
) -> ml_collections.ConfigDict:
    """``base`` with the entry's model and backbone (and ``steps`` training steps and ``seed`` when
    given)."""
    config = ml_collections.ConfigDict(base.to_dict())
    config.model, config.backbone = entry.model, entry.backbone
    if seed is not None:
        config.seed = seed
    if entry.backbone == "resnet34":
        config.pretrained = str(pretrained_resnet34 or "")
    if steps is not None:
        config.num_train_steps = steps
    return config


def _initialisation(pretrained: str | None) -> str:
    return f"ImageNet ({pretrained})" if pretrained else "random"


def train_or_reuse(config: ml_collections.ConfigDict, run_dir: Path, reuse: bool) -> float | None:
    """Trains ``config`` into ``run_dir`` unless ``reuse`` and it holds a checkpoint; returns the
    training time in seconds (None when reused)."""
    if run_folder.holds_checkpoint(run_dir):
        if reuse:
            return None
        raise FileExistsError(f"{run_dir} already holds a run: pass --reuse to evaluate it, or another --out")
    start = time.perf_counter()
    train_and_evaluate(config, run_dir)
    return time.perf_counter() - start


def machine() -> str:
    """The devices and host the comparison ran on."""
    device = jax.devices()[0]
    host = platform.processor() or platform.machine()
    return (
        f"{len(jax.devices())} x {device.device_kind} ({device.platform}); host {host}, {os.cpu_count()} CPUs"
    )


def compare_models(
    base: ml_collections.ConfigDict,
    out: str | Path,
    *,
    seeds: Sequence[int] | None = None,
    models: Sequence[str] = MODELS,
    steps: int | None = None,
    reuse: bool = False,
    db: str | Path | None = None,
    metadata_csv: str | Path | None = None,
    split: str = DEFAULT_SPLIT,
    pretrained_resnet34: str | Path | None = None,
    k: int = 10,
    figures: int = 0,
) -> dict[str, Any]:
    """Trains (or reuses) the :data:`TRAINED` models among ``models`` with every seed (default: the
    config's), evaluates them and :data:`VANILLA` (when among ``models``) on the same database (default:
    the config's data root and CSV, ``split`` of it), all with ``base``'s test-time orientations, and
    writes the table of means and standard deviations over the seeds."""
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}: choose among {list(MODELS)}")
    out = Path(out)
    db = Path(db if db is not None else base.data.root)
    metadata_csv = metadata_csv if metadata_csv is not None else base.data.metadata
    seeds = list(seeds) if seeds else [int(base.seed)]
    where = dict(metadata_csv=metadata_csv, split=split, k=k, figures=figures)
    # Every network is evaluated alike, reused runs too: with the base config's test-time orientations.
    orientations = int(base.get("test_time_orientations", 1))
    rows = []
    for entry in (entry for entry in (*TRAINED, VANILLA, TEXTURE) if entry.name in models):
        runs = []
        for seed in seeds:
            name = f"{entry.name}/seed{seed}"
            train_seconds, steps_done, image_size = None, 0, base.image_size
            if entry is TEXTURE:
                # Deterministic: every seed gives the same row, a std of 0.
                start = time.perf_counter()
                baseline = fit_texture_baseline(dataset_index(base).splits["train"], base.image_size)
                train_seconds = time.perf_counter() - start
                table = list_images(db, metadata_csv, split)
                report = report_index(baseline.index(table), db, out / "eval" / name, **where)
                init = "none (ridge fitted on the training split)"
            else:
                if entry is VANILLA:
                    model = load_model(
                        vanilla=entry.backbone,
                        pretrained=pretrained_resnet34,
                        image_size=base.image_size,
                        seed=seed,
                        orientations=orientations,
                    )
                    init = _initialisation(pretrained_resnet34)
                else:
                    config = run_config(base, entry, pretrained_resnet34, steps, seed)
                    train_seconds = train_or_reuse(config, out / "runs" / name, reuse)
                    model = load_model(out / "runs" / name, orientations=orientations)
                    init = _initialisation(config.pretrained)
                steps_done, image_size = model.identity.get("step", 0), model.image_size
                report = evaluate(model, db, out / "eval" / name, batch_size=base.eval_batch_size, **where)
            runs.append(
                {
                    "seed": seed,
                    "steps": steps_done,
                    "train_seconds": train_seconds,
                    "metrics": report["metrics"],
                }
            )
        mean, std = seed_statistics([run["metrics"] for run in runs])
        rows.append(
            {
                "name": entry.name,
                "model": entry.model,
                "backbone": entry.backbone,
                "initialisation": init,
                "steps": runs[0]["steps"],
                "image_size": image_size,
                "seeds": seeds,
                "metrics": mean,
                "metrics_std": std,
                "runs": runs,
            }
        )
    table = {
        "db": str(db.absolute()),
        "split": split,
        "n_images": report["n_images"],
        "k": k,
        "seeds": seeds,
        "machine": machine(),
        "models": rows,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json_text(table))
    (out / "comparison.md").write_text(comparison_markdown(table))
    return table


def seed_statistics(runs: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and standard deviation (ddof 1; 0 for one run) of every metric the ``runs`` share."""
    keys = [key for key in runs[0] if all(key in run for run in runs)]
    values = {key: np.array([run[key] for run in runs], np.float64) for key in keys}
    mean = {key: float(v.mean()) for key, v in values.items()}
    std = {key: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for key, v in values.items()}
    return mean, std


def mean_std_cell(mean: float | None, std: float | None, several: bool) -> str:
    """A table cell: ``mean ± std`` over several seeds, the value of one, ``–`` for none."""
    if mean is None:
        return "–"
    return f"{mean:.3f} ± {std:.3f}" if several else f"{mean:.4f}"


def comparison_markdown(table: dict[str, Any], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS) -> str:
    """The comparison as a Markdown table, one row per model (– where a model predicts nothing)."""
    k = table["k"]
    keys = [metric_key(level, name, k) for level, name in columns]
    header = ["model", "initialisation", "steps", *(metric_label(key, k) for key in keys)]
    seeds = table["seeds"]
    several = len(seeds) > 1
    spread = (
        f"Mean ± standard deviation over seeds {', '.join(map(str, seeds))}. "
        if several
        else f"Seed {seeds[0]}. "
    )
    lines = [
        "# Model comparison",
        "",
        f"Database `{table['db']}` (split {table['split']}, {table['n_images']} images); every image "
        f"queries all others; per sample, each sample's mean embedding queries the others' and its "
        f"slices' predictions are averaged. {spread}Machine: {table['machine']}.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] * 3 + ["---:"] * len(keys)) + " |",
    ]
    for row in table["models"]:
        cells = [row["name"], row["initialisation"], str(row["steps"])]
        cells += [
            mean_std_cell(row["metrics"].get(key), row["metrics_std"].get(key), several) for key in keys
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

"""rockir-compare: DSNN-R18, Siamese-R18 and Siamese-R34 trained, and the baselines, evaluated on one split.

    rockir-compare --out runs/comparison [--config configs/default.py] [--set KEY=VALUE ...] \
        [--seeds 0 1 2] [--steps N] \
        [--models DSNN-R18 Vanilla-R34] [--reuse] [--db <folder>] [--metadata <csv>] \
        [--pretrained-resnet34 weights/resnet34]

The three trained models share the base config except for ``model``, ``backbone`` and ``seed``
(ResNet-18 runs keep the config's ``pretrained`` weights; ResNet-34 ones get ``--pretrained-resnet34``,
else a random initialisation), train into ``<out>/runs/<name>/seed<s>`` and are evaluated, with the
vanilla baseline at the same input size and the texture baseline (grey histogram and radial power
spectrum, :mod:`rockir_jax.retrieval.texture`, fitted on the config's training split), into
``<out>/eval/<name>/seed<s>``. Each model's row holds
the mean and the standard deviation (ddof 1) of every metric over the seeds. The table goes to
``<out>/comparison.md`` and ``<out>/comparison.json``.
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

from rockir_jax.cli import common
from rockir_jax.configuration import load_config, override
from rockir_jax.data.database import DEFAULT_SPLIT, list_images
from rockir_jax.jsonio import json_text
from rockir_jax.retrieval.evaluation import evaluate, report_index
from rockir_jax.retrieval.loading import load_model
from rockir_jax.retrieval.metrics import PER_SAMPLE, metric_key, metric_label
from rockir_jax.retrieval.texture import fit_texture_baseline
from rockir_jax.train import dataset_index, train_and_evaluate


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

COLUMNS = (
    ("sample", "map@{k}"),
    ("reservoir", "map@{k}"),
    ("reservoir", "map"),
    (f"reservoir{PER_SAMPLE}", "map@{k}"),
    ("metadata", "porosity_mae"),
    ("metadata", "porosity_r2"),
    (f"metadata{PER_SAMPLE}", "porosity_r2"),
    ("metadata", "log10_permeability_rmse"),
    ("metadata", "log10_permeability_r2"),
    (f"metadata{PER_SAMPLE}", "log10_permeability_r2"),
)
"""The table's metric columns, (level, name) as in :mod:`rockir_jax.retrieval.metrics`."""


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


def _has_checkpoint(run_dir: Path) -> bool:
    return (run_dir / "config.json").is_file() and any((run_dir / "checkpoints").glob("[0-9]*"))


def train_or_reuse(config: ml_collections.ConfigDict, run_dir: Path, reuse: bool) -> float | None:
    """Trains ``config`` into ``run_dir`` unless ``reuse`` and it holds a checkpoint; returns the
    training time in seconds (None when reused)."""
    if _has_checkpoint(run_dir):
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
    the config's data root and CSV, ``split`` of it) and writes the table of means and standard
    deviations over the seeds."""
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}: choose among {list(MODELS)}")
    out = Path(out)
    db = Path(db if db is not None else base.data.root)
    metadata_csv = metadata_csv if metadata_csv is not None else base.data.metadata
    seeds = list(seeds) if seeds else [int(base.seed)]
    where = dict(metadata_csv=metadata_csv, split=split, k=k, figures=figures)
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
                    )
                    init = _initialisation(pretrained_resnet34)
                else:
                    config = run_config(base, entry, pretrained_resnet34, steps, seed)
                    train_seconds = train_or_reuse(config, out / "runs" / name, reuse)
                    model = load_model(out / "runs" / name)
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


def comparison_markdown(table: dict[str, Any], columns: Sequence[tuple[str, str]] = COLUMNS) -> str:
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


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("rockir-compare", __doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--out", type=common.path, required=True, help="output directory")
    parser.add_argument(
        "--config", type=common.path, default=Path("configs/default.py"), help="base config (.py/.json)"
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
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help="seeds to train and evaluate each model with (default: the config's)",
    )
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=MODELS, help="models to compare (default: all)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate runs already under <out>/runs as they are"
    )
    parser.add_argument("--db", type=common.path, help="database folder (default: the config's data root)")
    parser.add_argument("--metadata", type=common.path, help="metadata CSV (default: the config's)")
    parser.add_argument("--split", default=DEFAULT_SPLIT, help="split of a split-layout --db, or all")
    parser.add_argument(
        "--pretrained-resnet34", type=common.path, help="ported ImageNet ResNet-34 (else random init)"
    )
    parser.add_argument("-k", type=int, default=10, help="cut-off of the @k metrics")
    parser.add_argument("--figures", type=int, default=0, help="retrieval figures per model")
    args = parser.parse_args(argv)

    def body() -> None:
        compare_models(
            override(load_config(args.config), args.assignments),
            args.out,
            seeds=args.seeds,
            models=args.models,
            steps=args.steps,
            reuse=args.reuse,
            db=args.db,
            metadata_csv=args.metadata,
            split=args.split,
            pretrained_resnet34=args.pretrained_resnet34,
            k=args.k,
            figures=args.figures,
        )
        print((args.out / "comparison.md").read_text())

    common.run(body, verbose=args.verbose, log_dir=args.out)


if __name__ == "__main__":
    main()

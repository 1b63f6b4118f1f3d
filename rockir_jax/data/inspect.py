"""Prints a data-set summary and writes a contact sheet of training pairs.

    python -m rockir_jax.data.inspect --config configs/default.py
    python -m rockir_jax.data.inspect --root DIR --metadata CSV [--image_size 128] [--out pairs.png]

With ``--config``, reads ``config.data.root``, ``config.data.metadata``, ``config.image_size``,
``config.data.cache_dir`` (and ``config.data.extra_targets`` if present); explicit flags win. With a
cache directory the pairs come from the TFDS cache (built if needed), else straight from the files.
Validation problems are printed and the exit status is 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags
from matplotlib.figure import Figure
from ml_collections import config_flags

from rockir_jax.data.metadata import (
    DatasetIndex,
    DataValidationError,
    index_dataset,
    targets_to_physical,
)
from rockir_jax.data.pipeline import train_iterator
from rockir_jax.data.sources import SplitSource, from_index
from rockir_jax.data.tfds_builder import load_split, prepare


def _range(values: np.ndarray, fmt: str) -> str:
    return f"{format(values.min(), fmt)} .. {format(values.max(), fmt)}"


def summarize(index: DatasetIndex) -> str:
    """Human-readable summary: vocabularies, images per split, metadata ranges per split."""
    lines = [
        f"root: {index.root}",
        f"metadata: {index.metadata_csv}",
        f"samples: {len(index.samples)}, reservoirs: {len(index.reservoirs)} ({', '.join(index.reservoirs)})",
        f"targets: {', '.join(index.target_names)}",
    ]
    for split, table in index.splits.items():
        # One value per sample: images of a sample share its row.
        _, first = np.unique(table.sample_ids, return_index=True)
        porosity, permeability = targets_to_physical(
            table.targets[first], table.pixel_size[first], index.target_spec
        )
        lines.append(
            f"{split}: {len(table)} images, {len(first)} samples, "
            f"{len(np.unique(table.reservoir_ids))} reservoirs; "
            f"porosity {_range(porosity, '.3f')}, permeability {_range(permeability, '.4g')}, "
            f"pixel size {_range(table.pixel_size[first], '.4g')}"
        )
    return "\n".join(lines)


def contact_sheet(batch: dict[str, np.ndarray], path: str | Path, max_pairs: int = 8) -> Path:
    """Writes a PNG, one row per pair: both images with their targets, and the pair's labels."""
    n = min(max_pairs, len(batch["same_sample"]))
    # A bare Figure renders with Agg and leaves pyplot's global state alone.
    fig = Figure(figsize=(5, 2.6 * n))
    axes = fig.subplots(n, 2, squeeze=False)
    for row in range(n):
        for col in range(2):
            image = (batch[f"image{col}"][row] + 1.0) / 2.0
            targets = ", ".join(f"{t:.3g}" for t in batch[f"targets{col}"][row])
            ax = axes[row, col]
            ax.imshow(np.clip(image, 0.0, 1.0))
            ax.set_title(f"image{col}: [{targets}]", fontsize=8)
            ax.axis("off")
        labels = {k: int(batch[k][row]) for k in ("same_sample", "same_meta")}
        axes[row, 0].text(
            0.0,
            -0.08,
            "  ".join(f"{k}={v}" for k, v in labels.items()),
            transform=axes[row, 0].transAxes,
            fontsize=8,
            va="top",
        )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def run(
    root: str | Path,
    metadata: str | Path,
    image_size: int,
    out: str | Path,
    cache_dir: str | Path | None = None,
    num_pairs: int = 8,
    seed: int = 0,
    extra_targets: Sequence[str] = (),
) -> Path:
    """Validates the data set, prints its summary, writes the contact sheet; returns its path."""
    index = index_dataset(root, metadata, extra_targets=extra_targets)
    print(summarize(index))
    source: SplitSource
    if cache_dir:
        source = load_split(prepare(index, image_size, cache_dir), "train")
    else:
        source = from_index(index, "train", image_size)
    iterator = train_iterator(
        source, global_batch_size=num_pairs, seed=seed, process_index=0, process_count=1
    )
    try:
        batch = next(iterator)
    finally:
        iterator.close()
    path = contact_sheet(batch, out, num_pairs)
    print(f"contact sheet: {path}")
    return path


def _define_flags() -> None:
    # Defined only when run as a program, so importing run() never clashes with another module's
    # --config flag in the same process (e.g. the trainer's, under pytest).
    config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=False)
    flags.DEFINE_string("root", None, "Data root with train/, val/, db_test/.")
    flags.DEFINE_string("metadata", None, "Metadata CSV.")
    flags.DEFINE_integer("image_size", None, "Image side in pixels (default 128).")
    flags.DEFINE_string("cache_dir", None, "TFDS cache directory (none: read the files).")
    flags.DEFINE_string("out", "data_pairs.png", "Contact sheet PNG path.")
    flags.DEFINE_integer("num_pairs", 8, "Pairs on the contact sheet.")
    flags.DEFINE_integer("seed", 0, "Pair sampling seed.")


def main(argv: Sequence[str]) -> None:
    del argv
    opts = flags.FLAGS
    config = opts.config
    data = config.get("data", {}) if config is not None else {}

    def setting(flag_value, key: str, default=None):
        if flag_value is not None:
            return flag_value
        if key == "image_size":
            return config.get("image_size", default) if config is not None else default
        return data.get(key, default)

    root, metadata = setting(opts.root, "root"), setting(opts.metadata, "metadata")
    if root is None or metadata is None:
        raise app.UsageError("give --config, or --root and --metadata")
    try:
        run(
            root,
            metadata,
            image_size=setting(opts.image_size, "image_size", 128),
            out=opts.out,
            cache_dir=setting(opts.cache_dir, "cache_dir"),
            num_pairs=opts.num_pairs,
            seed=opts.seed,
            extra_targets=tuple(data.get("extra_targets", ())),
        )
    except DataValidationError as e:
        print(e, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    _define_flags()
    app.run(main)

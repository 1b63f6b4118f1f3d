"""A data set at a glance: a text summary and a contact sheet of training pairs with their labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from rockir_jax.data.metadata import (
    DatasetIndex,
    targets_to_physical,
)
from rockir_jax.data.pipeline import train_iterator
from rockir_jax.data.sources import SplitSource, from_index
from rockir_jax.data.tfds_builder import build_image_cache, load_split


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


def write_contact_sheet(
    index: DatasetIndex,
    image_size: int,
    out: str | Path,
    cache_dir: str | Path | None = None,
    num_pairs: int = 8,
    seed: int = 0,
) -> Path:
    """The contact sheet of the first batch of training pairs of ``index``, written to ``out``.

    With a ``cache_dir`` the pairs come from the TFDS cache (built if needed), else straight from the
    files.
    """
    source: SplitSource
    if cache_dir:
        source = load_split(build_image_cache(index, image_size, cache_dir), "train")
    else:
        source = from_index(index, "train", image_size)
    iterator = train_iterator(
        source, global_batch_size=num_pairs, seed=seed, process_index=0, process_count=1
    )
    try:
        batch = next(iterator)
    finally:
        iterator.close()
    return contact_sheet(batch, out, num_pairs)

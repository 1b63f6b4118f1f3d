"""Train (or reuse) DSNN-R18, Siamese-R18 and Siamese-R34, and compare them with Vanilla-R34.

    python scripts/compare_models.py --out runs/comparison [--config configs/default.py] [--steps N] \
        [--reuse] [--db <folder>] [--metadata <csv>] [--pretrained-resnet34 weights/resnet34]

Writes ``<out>/comparison.md`` and ``<out>/comparison.json``; runs in ``<out>/runs/<name>``, each
model's evaluation in ``<out>/eval/<name>``. See :mod:`rockir_jax.retrieval.compare`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rockir_jax import runtime
from rockir_jax.data.metadata import DataValidationError
from rockir_jax.retrieval import compare, evaluate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--config", type=Path, default=Path("configs/default.py"), help="base config (.py/.json)"
    )
    parser.add_argument("--steps", type=int, help="training steps (default: the config's)")
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate runs already under <out>/runs as they are"
    )
    parser.add_argument("--db", type=Path, help="database folder (default: the config's data root)")
    parser.add_argument("--metadata", type=Path, help="metadata CSV (default: the config's)")
    parser.add_argument(
        "--split", default=evaluate.DEFAULT_SPLIT, help="split of a split-layout --db, or all"
    )
    parser.add_argument("--pretrained-resnet34", help="ported ImageNet ResNet-34 (else random init)")
    parser.add_argument("-k", type=int, default=10, help="cut-off of the @k metrics")
    parser.add_argument("--figures", type=int, default=0, help="retrieval figures per model")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runtime.set_up_command_line_run()
    try:
        compare.compare_models(
            evaluate.load_config(args.config),
            args.out,
            steps=args.steps,
            reuse=args.reuse,
            db=args.db,
            metadata_csv=args.metadata,
            split=args.split,
            pretrained_resnet34=args.pretrained_resnet34,
            k=args.k,
            figures=args.figures,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        prefix = "the data set is not usable" if isinstance(err, DataValidationError) else "error"
        sys.exit(f"{prefix}: {err}")
    print((args.out / "comparison.md").read_text())


if __name__ == "__main__":
    main()

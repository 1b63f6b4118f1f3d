"""Retrieval evaluation of a trained run (or the vanilla baseline) on a database folder.

    python scripts/evaluate_retrieval.py --workdir runs/default --db datasets/synthetic_rocks \
        --metadata datasets/synthetic_rocks/metadata.csv --out runs/default/eval

Every image queries all others (itself excluded). Writes ``<out>/metrics.json``, ``metrics.md``,
``retrieval_<query>.png`` figures and the database index ``<out>/index/`` (reused by
``python -m rockir_jax.search --db <out>/index``). See :mod:`rockir_jax.retrieval.evaluate`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rockir_jax import runtime
from rockir_jax.data.metadata import DataValidationError
from rockir_jax.retrieval import evaluate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    evaluate.add_model_arguments(parser)
    parser.add_argument("--db", type=Path, required=True, help="flat image folder or split-layout root")
    parser.add_argument(
        "--split",
        default=evaluate.DEFAULT_SPLIT,
        help="split of a split-layout --db: train, val, db_test or all (ignored for a flat folder)",
    )
    parser.add_argument(
        "--metadata", type=Path, help="metadata CSV (true porosity, permeability, pixel size)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("-k", type=int, default=10, help="cut-off of the @k metrics")
    parser.add_argument("--figures", type=int, default=3, help="number of retrieval figures")
    parser.add_argument("--batch-size", type=int, default=64, help="images per embedding batch")
    parser.add_argument("--perm-unit", default="mD", help="unit of the CSV's Permeability, for figure titles")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    runtime.set_up_command_line_run()
    try:
        model = evaluate.model_from_arguments(args)
        report = evaluate.evaluate(
            model,
            args.db,
            args.out,
            metadata_csv=args.metadata,
            split=args.split,
            k=args.k,
            figures=args.figures,
            batch_size=args.batch_size,
            perm_unit=args.perm_unit,
        )
    except (FileNotFoundError, ValueError) as err:  # DataValidationError is a ValueError
        prefix = "the database is not usable" if isinstance(err, DataValidationError) else "error"
        sys.exit(f"{prefix}: {err}")
    print((args.out / "metrics.md").read_text())
    print(
        f"wrote {args.out}/metrics.json, metrics.md, index/ and {args.figures} figure(s) "
        f"for {report['n_images']} images"
    )


if __name__ == "__main__":
    main()

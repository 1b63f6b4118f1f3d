"""rockir-evaluate: retrieval evaluation of a trained run (or the vanilla baseline) on a database folder.

    rockir-evaluate --workdir runs/default --db datasets/synthetic_rocks/db_test \
        --metadata datasets/synthetic_rocks/metadata.csv --out runs/default/eval

Every image queries all others (itself excluded). Writes ``<out>/metrics.json``, ``metrics.md``,
``retrieval_<query>.png`` figures and the database index ``<out>/index/`` (reused by
``rockir-search --db <out>/index``). See :mod:`rockir_jax.retrieval.evaluation`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax

from rockir_jax.cli import common
from rockir_jax.data.database import DEFAULT_SPLIT
from rockir_jax.retrieval.evaluation import evaluate


def main(argv: Sequence[str] | None = None, prog: str = "rockir-evaluate") -> None:
    parser = common.parser(prog, __doc__.splitlines()[0].split(": ", 1)[1])
    common.add_model_arguments(parser)
    parser.add_argument(
        "--db", type=common.path, required=True, help="flat image folder or split-layout root"
    )
    parser.add_argument(
        "--split",
        default=DEFAULT_SPLIT,
        help="split of a split-layout --db: train, val, db_test or all (ignored for a flat folder)",
    )
    parser.add_argument(
        "--metadata", type=common.path, help="metadata CSV (true porosity, permeability, pixel size)"
    )
    parser.add_argument("--out", type=common.path, required=True, help="output directory")
    parser.add_argument(
        "-k",
        type=int,
        default=10,
        help="cut-off of the @k metrics (at most the number of images - 1: capped, with a note)",
    )
    parser.add_argument("--figures", type=int, default=3, help="number of retrieval figures")
    parser.add_argument("--batch-size", type=int, default=64, help="images per embedding batch")
    parser.add_argument("--perm-unit", default="mD", help="unit of the CSV's Permeability, for figure titles")
    args = parser.parse_args(argv)

    def body() -> None:
        report = evaluate(
            common.model_from_arguments(args),
            args.db,
            args.out,
            metadata_csv=args.metadata,
            split=args.split,
            k=args.k,
            figures=args.figures,
            batch_size=args.batch_size,
            perm_unit=args.perm_unit,
        )
        if jax.process_index() == 0:  # the one process that wrote them
            print((args.out / "metrics.md").read_text())
            if report["k"] != args.k:
                print(
                    f"note: k = {report['k']} (asked {args.k}): the database has {report['n_images']} images"
                )
            print(
                f"wrote {args.out}/metrics.json, metrics.md, index/ and {args.figures} figure(s) "
                f"for {report['n_images']} images"
            )

    common.run(body, verbose=args.verbose, log_dir=args.out)


if __name__ == "__main__":
    main()

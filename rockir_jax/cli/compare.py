"""rockir-compare: DSNN-R18, Siamese-R18 and Siamese-R34 trained, and the baselines, evaluated on one split.

    rockir-compare --out runs/comparison [--config configs/default.py] [--set KEY=VALUE ...] \\
        [--seeds 0 1 2] [--steps N] \\
        [--models DSNN-R18 Vanilla-R34] [--reuse] [--db <folder>] [--metadata <csv>] \\
        [--pretrained-resnet34 weights/resnet34]

Writes ``<out>/comparison.md`` and ``<out>/comparison.json``; see :mod:`rockir_jax.experiments.comparison`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rockir_jax.cli import common
from rockir_jax.configuration import load_config, override
from rockir_jax.data.database import DEFAULT_SPLIT
from rockir_jax.experiments.comparison import MODELS, compare_models


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

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

from rockir_jax.cli import common
from rockir_jax.configuration import load_config, override
from rockir_jax.experiments.comparison import MODELS
from rockir_jax.experiments.few_shot import few_shot


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

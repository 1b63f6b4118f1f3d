"""rockir-synthesize: generate the bundled synthetic digital-rock data set (needs the ``synth`` extra).

    rockir-synthesize --out datasets/synthetic_rocks --seed 20231

Writes ``train/<sample>/``, ``val/<sample>/``, flat ``db_test/``, ``metadata.csv``,
``generation.json``, ``README.md`` and ``overview.png``; see :mod:`rockir_jax.synth`.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from rockir_jax.cli import common
from rockir_jax.synth import dataset


def main(argv: Sequence[str] | None = None) -> None:
    """Parses ``argv`` (default: the command line) and generates the data set."""
    parser = common.parser("rockir-synthesize", __doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--out", type=common.path, default=Path("datasets/synthetic_rocks"))
    parser.add_argument("--reservoirs", type=int, default=6)
    parser.add_argument("--samples-per-reservoir", type=int, default=8)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--volume-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=20231)
    parser.add_argument(
        "--noise-sigma", type=float, default=5.0, help="scanner noise, in grey levels (default: 5)"
    )
    parser.add_argument(
        "--voxels-per-pixel",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="draw each sample's pixel size from this range, in voxels, by cropping its slices "
        "(default: the whole slice, volume size / image size)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(args_list)

    def body() -> None:
        config = dataset.DatasetConfig(
            seed=args.seed,
            reservoirs=args.reservoirs,
            samples_per_reservoir=args.samples_per_reservoir,
            slices=args.slices,
            image_size=args.image_size,
            volume_size=args.volume_size,
            noise_sigma=args.noise_sigma,
            voxels_per_pixel=None if args.voxels_per_pixel is None else tuple(args.voxels_per_pixel),
        )
        command = shlex.join(["rockir-synthesize", *args_list])
        report = dataset.write_dataset(args.out, config, command, args.workers, overwrite=args.overwrite)
        print(f"{len(report.results)} samples in {report.seconds:.0f} s -> {report.out}")

    common.run(body, verbose=args.verbose, uses_jax=False)


if __name__ == "__main__":
    main()

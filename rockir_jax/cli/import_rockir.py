"""rockir-import: a rockir_jax DSNN checkpoint assembled from the original RockIR's four PyTorch files.

    rockir-import --image epoch-920.pt --rock rock_epoch-920.pt --siam siam_epoch-920.pt \
        --reg reg_epoch-920.pt --out weights/rockir

The output is an orbax directory of ``params`` and ``batch_stats`` for ``DSNN(backbone=--arch)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from rockir_jax.cli import common
from rockir_jax.models import resnet_params


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("rockir-import", __doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument(
        "--image", type=common.path, required=True, help="image-branch backbone file (epoch-N.pt)"
    )
    parser.add_argument(
        "--rock", type=common.path, required=True, help="rock-branch backbone file (rock_epoch-N.pt)"
    )
    parser.add_argument("--siam", type=common.path, required=True, help="siam_epoch-N.pt (gated head)")
    parser.add_argument("--reg", type=common.path, required=True, help="reg_epoch-N.pt (regression head)")
    parser.add_argument("--arch", choices=["resnet18", "resnet34"], default="resnet18")
    parser.add_argument("--out", type=common.path, required=True, help="orbax checkpoint directory to write")
    args = parser.parse_args(argv)

    def body() -> None:
        variables = resnet_params.import_rockir_checkpoint(
            args.image, args.rock, args.siam, args.reg, args.arch
        )
        print(f"wrote DSNN-{args.arch} variables to {resnet_params.save_variables(variables, args.out)}")

    common.run(body, verbose=args.verbose, uses_jax=False)


if __name__ == "__main__":
    main()

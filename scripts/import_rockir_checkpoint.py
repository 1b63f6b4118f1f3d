"""Assembles a rockir_jax DSNN checkpoint from the original RockIR's four PyTorch files.

    python scripts/import_rockir_checkpoint.py --image model_image_epoch-920.pt \
        --rock model_rock_epoch-920.pt --siam siam_epoch-920.pt --reg reg_epoch-920.pt \
        --out weights/rockir

The output is an orbax directory of ``params`` and ``batch_stats`` for ``DSNN(backbone=--arch)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rockir_jax import porting


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--image", type=Path, required=True, help="image-branch backbone file")
    parser.add_argument("--rock", type=Path, required=True, help="rock-branch backbone file")
    parser.add_argument("--siam", type=Path, required=True, help="siam_epoch-N.pt (gated head)")
    parser.add_argument("--reg", type=Path, required=True, help="reg_epoch-N.pt (regression head)")
    parser.add_argument("--arch", choices=["resnet18", "resnet34"], default="resnet18")
    parser.add_argument("--out", type=Path, required=True, help="orbax checkpoint directory to write")
    args = parser.parse_args(argv)
    try:
        variables = porting.import_rockir_checkpoint(args.image, args.rock, args.siam, args.reg, args.arch)
    except (porting.PortingError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote DSNN-{args.arch} variables to {porting.save_variables(variables, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

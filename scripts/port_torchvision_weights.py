"""Ports torchvision (or original RockIR) ResNet weights to an orbax checkpoint of Flax variables.

    python scripts/port_torchvision_weights.py --arch resnet18 --pth resnet18-f37072fd.pth \
        --out weights/resnet18
    python scripts/port_torchvision_weights.py --arch resnet34 --download --out weights/resnet34

The output directory holds ``params`` and ``batch_stats``; point a config's ``pretrained`` at it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import jax

from rockir_jax import porting


def download_state_dict(arch: str, directory: Path) -> Path:
    """Fetches torchvision's IMAGENET1K_V1 weights through its weight enum (needs internet)."""
    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    path = directory / f"{arch}.pth"
    torch.save(weights.get_state_dict(progress=True), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--arch", choices=["resnet18", "resnet34"], default="resnet18")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pth", type=Path, help="a torchvision or RockIR backbone state-dict file")
    source.add_argument("--download", action="store_true", help="download IMAGENET1K_V1 weights")
    parser.add_argument("--out", type=Path, required=True, help="orbax checkpoint directory to write")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        pth = download_state_dict(args.arch, Path(tmp)) if args.download else args.pth
        try:
            variables = porting.torchvision_to_flax(porting.load_torch_state_dict(pth), args.arch)
        except (porting.PortingError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    out = porting.save_variables(variables, args.out)
    count = sum(leaf.size for leaf in jax.tree.leaves(variables))
    print(f"wrote {args.arch} ({count:,} values, classifier: {'fc' in variables['params']}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

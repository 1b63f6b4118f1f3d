"""rockir-port: torchvision (or original RockIR) ResNet weights as an orbax checkpoint of Flax variables.

    rockir-port --arch resnet18 --pth resnet18-f37072fd.pth --out weights/resnet18
    rockir-port --arch resnet34 --download --out weights/resnet34      # needs internet

The output directory holds ``params`` and ``batch_stats``; point a config's ``pretrained`` at it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax

from rockir_jax.cli import common
from rockir_jax.models import resnet_params


def download_state_dict(arch: str, directory: Path) -> Path:
    """Fetches torchvision's IMAGENET1K_V1 weights through its weight enum (needs internet)."""
    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    path = directory / f"{arch}.pth"
    torch.save(weights.get_state_dict(progress=True), path)
    return path


def main(argv: Sequence[str] | None = None, prog: str = "rockir-port") -> None:
    parser = common.parser(prog, __doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--arch", choices=["resnet18", "resnet34"], default="resnet18")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pth", type=common.path, help="a torchvision or RockIR backbone state-dict file")
    source.add_argument("--download", action="store_true", help="download IMAGENET1K_V1 weights")
    parser.add_argument("--out", type=common.path, required=True, help="orbax checkpoint directory to write")
    args = parser.parse_args(argv)

    def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            pth = download_state_dict(args.arch, Path(tmp)) if args.download else args.pth
            variables = resnet_params.torchvision_to_flax(resnet_params.load_torch_state_dict(pth), args.arch)
        out = resnet_params.save_variables(variables, args.out)
        count = sum(leaf.size for leaf in jax.tree.leaves(variables))
        print(f"wrote {args.arch} ({count:,} values, classifier: {'fc' in variables['params']}) to {out}")

    common.run(body, verbose=args.verbose, uses_jax=False)


if __name__ == "__main__":
    main()

"""rockir-export: a trained run's model as one directory to hand to someone else.

    rockir-export --workdir runs/default --out models/default [--step N]

The directory holds the parameters and BatchNorm statistics, the run's config.json and model.json
(model, backbone, image size, step, SHA-256 of the weights); ``rockir-evaluate`` and ``rockir-search``
take it as ``--model-dir``, on any machine and device count. See
:func:`rockir_jax.training.checkpoint.export_model`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rockir_jax.cli import common
from rockir_jax.training.checkpoint import export_model


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("rockir-export", __doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--workdir", type=common.path, required=True, help="the training run")
    parser.add_argument("--out", type=common.path, required=True, help="directory to write (new or empty)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the best, else the latest)")
    args = parser.parse_args(argv)

    def body() -> None:
        out = export_model(args.workdir, args.out, args.step)
        print(f"wrote {out}: use it with --model-dir {out}")

    common.run(body, verbose=args.verbose)


if __name__ == "__main__":
    main()

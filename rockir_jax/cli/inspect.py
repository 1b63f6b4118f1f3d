"""rockir-inspect: a data set's summary, and a contact sheet of training pairs with their labels.

    rockir-inspect --config configs/default.py [--out pairs.png]
    rockir-inspect --root DIR --metadata CSV [--image-size 128] [--out pairs.png]

With ``--config``, reads ``data.root``, ``data.metadata``, ``image_size``, ``data.cache_dir`` and
``data.extra_targets`` from it; explicit flags win. With a cache directory the pairs come from the TFDS
cache (built if needed), else straight from the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rockir_jax.cli import common
from rockir_jax.configuration import load_config
from rockir_jax.data.inspect import summarize, write_contact_sheet
from rockir_jax.data.metadata import index_dataset


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.parser("rockir-inspect", __doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument(
        "--config", type=common.path, help="a training config (configs/*.py or a run's config.json)"
    )
    parser.add_argument("--root", type=common.path, help="data root with train/, val/, db_test/")
    parser.add_argument("--metadata", type=common.path, help="metadata CSV")
    parser.add_argument("--image-size", type=int, help="image side in pixels (default: the config's, or 128)")
    parser.add_argument(
        "--cache-dir", type=common.path, help="TFDS cache directory (default: the config's; none: files)"
    )
    parser.add_argument("--out", type=common.path, default=Path("data_pairs.png"), help="contact sheet PNG")
    parser.add_argument("--num-pairs", type=int, default=8, help="pairs on the contact sheet")
    parser.add_argument("--seed", type=int, default=0, help="pair sampling seed")
    args = parser.parse_args(argv)

    def body() -> None:
        config = load_config(args.config) if args.config else None
        data = config.data if config is not None else {}
        root = args.root or data.get("root")
        metadata = args.metadata or data.get("metadata")
        if not root or not metadata:
            raise ValueError("give --config, or --root and --metadata")
        image_size = args.image_size or (config.get("image_size") if config is not None else None) or 128
        cache_dir = args.cache_dir or data.get("cache_dir") or None
        index = index_dataset(
            root,
            metadata,
            extra_targets=tuple(data.get("extra_targets", ())),
            disjoint_samples=data.get("disjoint_samples", False),
        )
        print(summarize(index))
        path = write_contact_sheet(index, image_size, args.out, cache_dir, args.num_pairs, args.seed)
        print(f"contact sheet: {path}")

    common.run(body, verbose=args.verbose)


if __name__ == "__main__":
    main()

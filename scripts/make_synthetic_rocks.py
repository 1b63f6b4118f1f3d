"""Generate the bundled synthetic digital-rock data set (needs the ``synth`` extra).

    python scripts/make_synthetic_rocks.py --out datasets/synthetic_rocks --seed 20231

Writes ``train/<sample>/``, ``val/<sample>/``, flat ``db_test/``, ``metadata.csv``,
``generation.json``, ``README.md`` and ``overview.png``; see :mod:`rockir_jax.data.synthetic`.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from pathlib import Path

from tqdm import tqdm

from rockir_jax.data import synthetic


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("datasets/synthetic_rocks"))
    parser.add_argument("--reservoirs", type=int, default=6)
    parser.add_argument("--samples-per-reservoir", type=int, default=8)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--volume-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=20231)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = synthetic.DatasetConfig(
        seed=args.seed,
        reservoirs=args.reservoirs,
        samples_per_reservoir=args.samples_per_reservoir,
        slices=args.slices,
        image_size=args.image_size,
        volume_size=args.volume_size,
    )
    if args.out.exists():
        if not args.overwrite:
            sys.exit(f"{args.out} exists; pass --overwrite to replace it")
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    command = shlex.join(["python", "scripts/make_synthetic_rocks.py", *sys.argv[1:]])
    start = time.perf_counter()
    results = []
    jobs = synthetic.generate_samples(config, workers=args.workers)
    for result in tqdm(jobs, total=len(synthetic.sample_jobs(config)), unit="sample"):
        synthetic.write_sample_images(args.out, result)
        results.append(result)
    wall_s = time.perf_counter() - start
    synthetic.write_metadata(args.out, results)
    synthetic.write_generation_record(args.out, config, results, command)
    synthetic.contact_sheet(results, args.out / "overview.png")
    synthetic.write_readme(args.out, config, results, command, wall_s, args.workers)
    print(f"{len(results)} samples in {wall_s:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()

"""Speed benchmark, side by side: python scripts/benchmark.py [--quick|--full] [options].

Measures the train step against PyTorch, search against FAISS at its best, the input pipeline and the
embedding in one run and prints a table of medians and ratios; ``--out docs/BENCHMARKS.md`` appends it there.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import jax


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="128² only, 5 repetitions (default)")
    mode.add_argument("--full", action="store_true", help="128² and 224², 9 repetitions")
    parser.add_argument("--image-size", type=int, nargs="+", help="image sizes of the step benchmarks")
    parser.add_argument("--batch", type=int, help="global batch of pairs (default 8)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], help="JAX computation dtype")
    parser.add_argument(
        "--conv-algorithm",
        nargs="+",
        choices=["auto", "direct", "winograd"],
        help="the DSNN's 3×3 convolutions; several are measured side by side (default auto)",
    )
    parser.add_argument("--repeats", type=int, help="timed repetitions per step benchmark")
    parser.add_argument("--queries", type=int, nargs="+", help="query batch sizes (default 1000 100 1)")
    parser.add_argument("--database", type=int, help="database rows (default 100000)")
    parser.add_argument("--dim", type=int, help="vector dimension (default 512)")
    parser.add_argument("--num-devices", type=int, help="devices of the mesh (default 0 = all)")
    parser.add_argument(
        "--cpu-devices", type=int, help="JAX devices the host CPU is split into (default: one per core)"
    )
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for the chosen dtype")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
    parser.add_argument("--no-faiss", action="store_true", help="skip the FAISS reference")
    parser.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS before JAX starts")
    only = parser.add_mutually_exclusive_group()
    only.add_argument(
        "--serve", action="store_true", help="only the search page's request latency (p50, p95)"
    )
    only.add_argument(
        "--cache", action="store_true", help="only the image cache's build rate against worker processes"
    )
    parser.add_argument("--out", help="Markdown file to append the run to (e.g. docs/BENCHMARKS.md)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    if args.xla_flags:
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {args.xla_flags}".strip()
    import benchmark_lib as benchmark  # after XLA_FLAGS: JAX reads them once

    from rockir_jax import runtime

    if args.cpu_devices:
        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    else:
        runtime.use_one_cpu_device_per_core()
    runtime.reuse_freed_memory()  # for the PyTorch reference in this process as much as for JAX

    overrides = {
        key: value
        for key, value in {
            "image_sizes": tuple(args.image_size) if args.image_size else None,
            "batch": args.batch,
            "dtype": args.dtype,
            "conv_algorithms": tuple(args.conv_algorithm) if args.conv_algorithm else None,
            "repeats": args.repeats,
            "queries": tuple(args.queries) if args.queries else None,
            "database": args.database,
            "dim": args.dim,
            "num_devices": args.num_devices,
            "peak_tflops": args.peak_tflops,
        }.items()
        if value is not None
    }
    overrides |= {"torch": not args.no_torch, "faiss": not args.no_faiss}
    config = (benchmark.full_config if args.full else benchmark.quick_config)(**overrides)
    start = time.perf_counter()
    if args.serve:
        rows = benchmark.serve_rows(config)
    elif args.cache:
        rows = [row for size in config.image_sizes for row in benchmark.cache_rows(config, size)]
    else:
        rows = benchmark.run(config)
    info = benchmark.machine_info()
    command = shlex.join(["python", "scripts/benchmark.py", *argv])
    report = benchmark.format_report(rows, info, command, time.perf_counter() - start)
    print(report)
    if args.out:
        benchmark.append_report(args.out, report)


if __name__ == "__main__":
    main(sys.argv[1:])

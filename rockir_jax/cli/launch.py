"""rockir-launch: N processes of one command on this machine, as a cluster launcher would start them.

    rockir-launch --processes 2 [--cpu-devices 2] -- \\
        rockir-train --config configs/default.py --workdir runs/mh

A try-out of a multi-host run on one machine (the same as ``python -m rockir_jax.launch``); see
:mod:`rockir_jax.local_processes`. On a cluster, use SLURM's ``srun`` or torchrun instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rockir_jax.cli import common
from rockir_jax.local_processes import launch


def main(argv: Sequence[str] | None = None) -> None:
    """Parses ``argv`` (default: the command line), runs the processes and exits with their status."""
    parser = common.parser("rockir-launch", __doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--processes", "-n", type=int, required=True, help="number of processes")
    parser.add_argument(
        "--cpu-devices", type=int, help="JAX CPU devices per process (JAX_NUM_CPU_DEVICES); for CPU runs"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command every process runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.cpu_devices is not None and args.cpu_devices < 1:
        parser.error("--cpu-devices must be at least 1")
    status = 0

    def body() -> None:
        nonlocal status
        status = launch(command, args.processes, args.cpu_devices)

    common.run(body, verbose=args.verbose, uses_jax=False)
    sys.exit(status)


if __name__ == "__main__":
    main()

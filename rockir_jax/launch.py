"""N processes of one command on this machine, as a cluster launcher would start them.

    python -m rockir_jax.launch --processes 2 [--cpu-devices 2] -- \
        python -m rockir_jax.train --config configs/default.py --workdir runs/mh

Each process gets the torchrun-style variables that :func:`rockir_jax.runtime.maybe_initialize_distributed`
reads (``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``) and, with
``--cpu-devices``, ``JAX_NUM_CPU_DEVICES`` (on CPU the processes' collectives then go over loopback
through gloo). The children label their own output (``[process N]``). When one exits with an error
the others are stopped and the launcher exits with that status; otherwise it exits 0 once all have.
A try-out of a multi-host run on one machine; on a cluster, use SLURM's ``srun`` or torchrun instead.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence

# How long stopped processes get to exit before they are killed.
_GRACE_SECONDS = 10.0


def free_port() -> int:
    """A TCP port on the loopback interface that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_environments(
    processes: int, cpu_devices: int | None = None, base: dict[str, str] | None = None
) -> list[dict[str, str]]:
    """The environment of each of ``processes`` local processes (``base``: default ``os.environ``)."""
    base = dict(os.environ if base is None else base)
    shared = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(processes)}
    if cpu_devices is not None:
        shared["JAX_NUM_CPU_DEVICES"] = str(cpu_devices)
    return [base | shared | {"RANK": str(rank)} for rank in range(processes)]


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _GRACE_SECONDS
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def launch(command: Sequence[str], processes: int, cpu_devices: int | None = None) -> int:
    """Runs ``command`` as ``processes`` local processes; the first non-zero exit status, else 0."""
    children = [
        subprocess.Popen(list(command), env=env) for env in process_environments(processes, cpu_devices)
    ]
    try:
        while True:
            codes = [child.poll() for child in children]
            failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
            if failed:
                rank, code = failed[0]
                print(
                    f"launch: process {rank} exited with status {code}; stopping the others", file=sys.stderr
                )
                _stop(children)
                return code if code > 0 else 128 - code
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(children)
        return 130


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rockir_jax.launch", description=__doc__.splitlines()[0])
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
    sys.exit(launch(command, args.processes, args.cpu_devices))


if __name__ == "__main__":
    main()

"""N processes of one command on this machine, as a cluster launcher would start them (``rockir-launch``).

Each process gets the torchrun-style variables that :func:`rockir_jax.runtime.maybe_initialize_distributed`
reads (``MASTER_ADDR=127.0.0.1``, a free ``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``) and, with
``--cpu-devices``, ``JAX_NUM_CPU_DEVICES`` (on CPU the processes' collectives then go over loopback
through gloo). The children label their own output (``[process N]``). When one exits with an error
the others are stopped and the launcher exits with that status; otherwise it exits 0 once all have.
A try-out of a multi-host run on one machine; on a cluster, use SLURM's ``srun`` or torchrun instead.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

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
                log.error("process %d exited with status %d; stopping the others", rank, code)
                _stop(children)
                return code if code > 0 else 128 - code
            if all(code == 0 for code in codes):
                return 0
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(children)
        return 130

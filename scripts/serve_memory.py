"""The search page's memory under hostile uploads: rockir-serve's peak and settled RSS around N concurrent
worst-case images (docs/serve-hardening.md).

    python scripts/serve_memory.py [--uploads 16] [--side 7000] -- <rockir-serve's model and --index options>

Starts ``rockir-serve`` as a subprocess on 127.0.0.1 (a free port; nothing else is contacted), waits for
it to answer, writes a ``side``² 16-bit greyscale PNG of almost no bytes (the worst a 50-megapixel limit
lets through: ~100 MB decoded from ~100 KB), resets the server's peak RSS (``/proc/<pid>/clear_refs``),
posts the image ``--uploads`` times at once, and reads ``VmHWM`` (peak) and ``VmRSS`` from
``/proc/<pid>/status`` before, at the peak and ``--settle`` seconds after the last answer. Linux only.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image


def worst_png(side: int) -> bytes:
    """A ``side``² 16-bit grey PNG of a faint ramp: decodes to 2 bytes a pixel, compresses ~1000×."""
    pixels = np.zeros((side, side), np.uint16)
    pixels[:, : min(side, 256)] = np.arange(min(side, 256), dtype=np.uint16) * 256
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(url: str, name: str, data: bytes) -> int:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def wait_until_up(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"rockir-serve exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"rockir-serve did not answer {url} within {timeout:.0f} s")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=16, help="concurrent uploads")
    parser.add_argument("--side", type=int, default=7000, help="image side in pixels")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to wait before the last RSS")
    parser.add_argument("--start-timeout", type=float, default=600.0, help="seconds to wait for the server")
    parser.add_argument(
        "--serve-command",
        default="rockir-serve",
        help="the server command (e.g. 'python -m rockir_jax.cli.serve')",
    )
    parser.add_argument("serve", nargs=argparse.REMAINDER, help="-- then rockir-serve's options")
    args = parser.parse_args(argv)
    serve_args = args.serve[1:] if args.serve[:1] == ["--"] else args.serve
    command = shlex.split(args.serve_command)
    if shutil.which(command[0]) is None:
        sys.exit(f"{command[0]}: no such command (pip install -e . installs rockir-serve)")

    data = worst_png(args.side)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [*command, *serve_args, "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=log
        )
        try:
            wait_until_up(f"{base}/api/health", server, args.start_timeout)
            time.sleep(1.0)
            before = memory(server.pid)
            Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.uploads) as pool:
                statuses = list(
                    pool.map(lambda i: post(f"{base}/api/search", f"worst{i}.png", data), range(args.uploads))
                )
            elapsed = time.perf_counter() - start
            peak = memory(server.pid)["VmHWM"]
            time.sleep(args.settle)
            after = memory(server.pid)["VmRSS"]
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if server.returncode not in (0, -signal.SIGINT, 130):
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
    mb = lambda n: round(n / 2**20, 1)
    report = {
        "image": f"{args.side}² 16-bit grey PNG, {len(data):,} bytes",
        "uploads": args.uploads,
        "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
        "seconds": round(elapsed, 2),
        "rss_before_mib": mb(before["VmRSS"]),
        "peak_mib": mb(peak),
        "peak_growth_mib": mb(peak - before["VmRSS"]),
        "rss_after_mib": mb(after),
        "after_minus_before_mib": mb(after - before["VmRSS"]),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

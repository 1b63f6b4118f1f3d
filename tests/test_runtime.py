"""One JAX CPU device per core, unless the user chose a device count."""

import os
import subprocess
import sys

import pytest

PROBE = (
    "import jax; from rockir_jax import runtime; runtime.use_one_cpu_device_per_core(); "
    "print(len(jax.devices()))"
)


def _device_count(xla_flags: str | None) -> int:
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return int(result.stdout.strip().splitlines()[-1])


def test_one_device_per_core():
    assert _device_count(None) == len(os.sched_getaffinity(0))


def test_a_chosen_device_count_is_kept():
    assert _device_count("--xla_force_host_platform_device_count=3") == 3


def test_after_jax_started_it_warns_and_keeps_the_devices():
    env = {key: value for key, value in os.environ.items() if key != "XLA_FLAGS"}
    code = "import jax; n = len(jax.devices()); " + PROBE.replace("print(len(jax.devices()))", "print(n)")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "1"
    assert "already running" in result.stderr


# What XLA:CPU does with an execution's buffers: malloc, write, free (numpy would ask for huge pages).
FAULTS_PROBE = """
import ctypes, ctypes.util, resource, sys
from rockir_jax import runtime
if sys.argv[1] == "reuse":
    assert runtime.reuse_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def write_and_free(size=64 << 20):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
write_and_free()
before = faults()
for _ in range(4):
    write_and_free()
print((faults() - before) / 4)
"""


def _page_faults_per_64_mib(mode: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", FAULTS_PROBE, mode], capture_output=True, text=True, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_memory_is_reused_without_page_faults():
    # By default glibc maps a 64 MiB block afresh each time: 16,384 pages to fault in and zero-fill.
    assert _page_faults_per_64_mib("default") > 10_000
    assert _page_faults_per_64_mib("reuse") < 100

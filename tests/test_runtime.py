"""One JAX CPU device per core, unless the user chose a device count."""

import os
import subprocess
import sys

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

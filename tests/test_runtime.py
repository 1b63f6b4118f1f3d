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


@pytest.fixture
def restored_logging():
    """configure_logging changes the process's root logger: put it back afterwards."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def _log_one_of_each(logging):
    logging.getLogger("rockir_jax.train").info("training on 2 devices")
    logging.getLogger("rockir_jax.data").warning("no val split")
    logging.getLogger("absl").info("CheckpointManager Save Finalize is syncing")
    logging.getLogger("absl").warning("read-only checkpoint options")
    logging.getLogger("orbax").error("a real failure")


def test_console_shows_our_lines_and_library_errors_the_file_everything(tmp_path, capsys, restored_logging):
    import logging

    from rockir_jax import runtime

    assert runtime.configure_logging(tmp_path, verbose=False) == tmp_path / "log.txt"
    _log_one_of_each(logging)
    console = capsys.readouterr().err.splitlines()
    assert console == ["training on 2 devices", "warning: no val split", "error: orbax: a real failure"]
    logged = (tmp_path / "log.txt").read_text()
    for text in ("training on 2", "no val split", "is syncing", "read-only checkpoint", "a real failure"):
        assert text in logged
    assert " I absl " in logged and " W absl " in logged  # levels and loggers, as absl writes them


def test_verbose_and_no_log_dir(tmp_path, capsys, restored_logging, monkeypatch):
    import logging

    from rockir_jax import runtime

    monkeypatch.chdir(tmp_path)
    assert runtime.configure_logging(None, verbose=True) is None
    runtime.configure_logging(None, verbose=True)  # again: no duplicate lines
    _log_one_of_each(logging)
    console = capsys.readouterr().err
    assert "info: absl: CheckpointManager Save Finalize is syncing" in console
    assert "warning: absl: read-only checkpoint options" in console
    assert console.count("training on 2 devices") == 1
    runtime.configure_logging(None, verbose=False)
    _log_one_of_each(logging)
    assert "absl" not in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


CONSOLE_AFTER_ORBAX = """
import logging, sys
import orbax.checkpoint  # logs through absl before any flag parsing: absl calls basicConfig
from rockir_jax import runtime
runtime.configure_logging(sys.argv[1])
logging.getLogger("absl").info("CheckpointManager created")
logging.getLogger("rockir_jax.train").info("training on 1 devices")
"""


def test_a_library_handler_installed_on_import_is_replaced(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", CONSOLE_AFTER_ORBAX, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == ["training on 1 devices"]
    assert "CheckpointManager created" in (tmp_path / "log.txt").read_text()

"""Process set-up shared by the command lines: logging, CPU devices, memory reuse, compile cache,
multi-process."""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import itertools
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TextIO

import jax
from absl import flags as absl_flags
from absl import logging as absl_logging
from jax._src import distributed as jax_distributed
from tqdm import tqdm

from rockir_jax.run_folder import LOG_FILE

COMPILATION_CACHE = Path("~/.cache/rockir_jax/xla")

logger = logging.getLogger("rockir_jax")
"""The package's logger: its records are the console's lines; every module logs under it."""

_FILE_FORMAT = "%(asctime)s %(levelname).1s %(name)s %(filename)s:%(lineno)d] %(message)s"


def _is_ours(record: logging.LogRecord) -> bool:
    return record.name == logger.name or record.name.startswith(f"{logger.name}.")


class _ConsoleHandler(logging.Handler):
    """Lines on stderr, above any progress bar: the package's own records, and other libraries' errors.

    Other libraries' INFO and WARNING records (absl, orbax, TFDS, grain, JAX) describe their own
    machinery and go to the log file only; ``verbose`` shows them here too.
    """

    def __init__(self, verbose: bool):
        super().__init__(logging.INFO)
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        return self.verbose or _is_ours(record) or record.levelno >= logging.ERROR

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{logging.Formatter().formatException(record.exc_info)}"
        if not _is_ours(record):
            return f"{record.levelname.lower()}: {record.name}: {message}"
        return message if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {message}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            # tqdm.write keeps an active progress bar intact below the line.
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never raise; the logging module reports it
            self.handleError(record)


_PACKAGE_DIR = Path(__file__).resolve().parent


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as log records: the package's as a console line ``warning: …`` without a source path,
    other libraries' to the log file (and the console with ``verbose``)."""
    if Path(filename).resolve().is_relative_to(_PACKAGE_DIR):
        logger.warning("%s", message)
    else:
        logging.getLogger("py.warnings").warning(
            "%s:%s: %s: %s", filename, lineno, category.__name__, message
        )


def configure_logging(log_dir: str | Path | None, verbose: bool = False) -> Path | None:
    """Sends the package's messages to the console and everything else to ``<log_dir>/log.txt``.

    The console (stderr) gets this package's records (INFO and up) and every library's errors;
    the log file, appended to, gets every record at INFO and up, timestamped. Without a ``log_dir``
    other libraries' INFO and WARNING records are dropped; ``verbose`` puts them on the console as
    well. Replaces absl's stderr handler, any other console handler on the root logger (absl installs
    one with ``basicConfig`` when a library logs before flags are parsed, as orbax does on import) and
    any handler an earlier call installed, so commands may call it again. Returns the log file's path,
    if any.
    """
    root = logging.getLogger()
    absl_handler = getattr(sys.modules.get("absl.logging"), "get_absl_handler", lambda: None)()
    for handler in list(root.handlers):
        console = type(handler) is logging.StreamHandler and handler.stream in (sys.stderr, sys.stdout)
        if handler is absl_handler or console or getattr(handler, "_rockir_jax", False):
            root.removeHandler(handler)
            if handler is not absl_handler:
                handler.close()
    handlers: list[logging.Handler] = [_ConsoleHandler(verbose)]
    path = None
    if log_dir is not None:
        path = Path(log_dir) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(_FILE_FORMAT))
        handlers.append(file_handler)
    for handler in handlers:
        handler._rockir_jax = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO if path is not None or verbose else logging.WARNING)
    logger.setLevel(logging.INFO)
    # absl's logger (orbax, TFDS and grain log through it) keeps a level of its own after flag
    # parsing; NOTSET makes it follow the root's.
    logging.getLogger("absl").setLevel(logging.NOTSET)
    warnings.showwarning = _show_warning
    return path


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_one_cpu_device_per_core() -> None:
    """Makes the host CPU one JAX device per core; call before the first JAX computation.

    XLA:CPU runs every convolution with 64 input or output channels (ResNet's stem and first stage)
    on a single thread, so a one-device CPU run leaves the other cores mostly idle there. One device
    per core turns them into data parallelism, which the sharded steps already do (docs/cpu-speed.md).
    A device count the user chose (``XLA_FLAGS=--xla_force_host_platform_device_count``,
    ``jax_num_cpu_devices``) is kept, and GPU or TPU runs are unaffected (their devices are not CPU
    devices).
    """
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return
    if jax.config.jax_num_cpu_devices != -1:
        return
    try:
        jax.config.update("jax_num_cpu_devices", cpu_count())
    except RuntimeError:
        logger.warning("JAX is already running: keeping its CPU devices (%d)", len(jax.devices("cpu")))


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def reuse_freed_memory() -> bool:
    """Makes glibc keep freed memory for reuse instead of handing it back to the kernel.

    XLA:CPU allocates each execution's temporary buffers afresh (hundreds of MB per DSNN step) and
    glibc serves blocks that large with ``mmap`` and returns them with ``munmap``, so every step the
    kernel maps and zero-fills them again (docs/cpu-speed.md). One heap (``M_ARENA_MAX``), no
    ``mmap`` (``M_MMAP_MAX``) and no trimming make the next step reuse the same pages; the process keeps
    its peak heap, as tcmalloc-style allocators do. Returns whether glibc took the settings (not on
    other C libraries, where this does nothing).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def enable_compilation_cache() -> None:
    """Reuses compiled programs across runs and resumes (the first compile takes a minute on CPU)."""
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", str(COMPILATION_CACHE.expanduser()))


def set_up_command_line_run() -> None:
    """What every entry point does first: one CPU device per core, memory reuse, the compilation cache,
    and absl's flags marked parsed (the commands define none; grain's worker processes read them)."""
    use_one_cpu_device_per_core()
    reuse_freed_memory()
    enable_compilation_cache()
    if not absl_flags.FLAGS.is_parsed():
        absl_flags.FLAGS.mark_as_parsed()


HEARTBEAT_TIMEOUT_SECONDS = 30
"""How long a process may go silent before the coordination service declares it dead."""


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when launched as several processes (SLURM or torchrun-style).

    SLURM and explicit ``JAX_COORDINATOR_ADDRESS`` set-ups are detected by JAX itself; torchrun-style
    launchers set ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` and ``RANK``. CPU processes run
    their collectives through gloo. A process that dies is noticed by the coordination service
    within :data:`HEARTBEAT_TIMEOUT_SECONDS`, which then stops the others with an error naming it.
    Afterwards the output of every process but process 0 is labelled (:func:`label_process_output`).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        where = {
            "coordinator_address": f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
            "num_processes": int(os.environ["WORLD_SIZE"]),
            "process_id": int(os.environ["RANK"]),
        }
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "JAX_COORDINATOR_ADDRESS" in os.environ:
        where = {}
    else:
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**where, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS)
    label_process_output(jax.process_index())


_BARRIER_TIMEOUT_SECONDS = 3600
_barriers = itertools.count()


def wait_for_all_processes(name: str) -> None:
    """Blocks until every process of a multi-process job gets here; nothing in a single process.

    The wait goes through the coordination service, not a collective: gloo, the CPU collectives,
    gives a process 30 s to join a collective a peer has started, so a phase whose length differs
    between processes (building the data cache, compiling) has to end at such a barrier.
    """
    if jax.process_count() == 1:
        return
    # JAX's own barriers (multihost_utils.sync_global_devices) are collectives; the coordination
    # service's client, which jax.distributed.initialize made, waits without one.
    client = jax_distributed.global_state.client
    client.wait_at_barrier(f"rockir_jax/{name}/{next(_barriers)}", _BARRIER_TIMEOUT_SECONDS * 1000)


class _LabelledLines(io.TextIOBase):
    """A text stream that starts every line written to ``stream`` with ``label``."""

    def __init__(self, stream: TextIO, label: str):
        self._stream, self._label, self._at_line_start = stream, label, True

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = text.split("\n")
        out = []
        for i, line in enumerate(lines):
            self._at_line_start |= i > 0
            if line:
                line = self._label + line if self._at_line_start else line
                self._at_line_start = False
            out.append(line)
        self._stream.write("\n".join(out))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return self._stream.isatty()


def label_process_output(process_index: int) -> None:
    """Quiets every process but process 0: warnings and errors only, each line ``[process N] …``.

    Python's ``sys.stdout`` and ``sys.stderr`` (and the log handlers writing to them) prefix their
    lines and log records below WARNING are dropped. Progress bars are process 0's alone (the
    callers that draw them check :func:`jax.process_index`).
    """
    if process_index == 0:
        return
    label = f"[process {process_index}] "
    streams = {}
    for name in ("stdout", "stderr"):
        original = getattr(sys, name)
        streams[id(original)] = labelled = _LabelledLines(original, label)
        setattr(sys, name, labelled)
    handlers = list(logging.getLogger().handlers)
    absl_handler = absl_logging.get_absl_handler().python_handler
    for handler in [*handlers, absl_handler]:
        if isinstance(handler, logging.StreamHandler) and id(handler.stream) in streams:
            handler.setStream(streams[id(handler.stream)])
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)
    logger.setLevel(logging.WARNING)

"""What every command shares: one argparse style, the process set-up, errors as one line and an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rockir_jax import runtime

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of command ``prog`` (e.g. ``rockir-evaluate``)."""
    return argparse.ArgumentParser(prog=prog, description=description)


def run(body: Callable[[], None], *, uses_jax: bool = True) -> None:
    """Runs a command's ``body``: the JAX process set-up first, then the library call.

    A library error about the user's input (a missing file, a bad value, an unusable data set: all
    :class:`FileNotFoundError` or :class:`ValueError`) becomes one ``error: …`` message on stderr and
    exit status 2, not a traceback; Ctrl-C exits with 130.
    """
    if uses_jax:
        runtime.set_up_command_line_run()
    try:
        body()
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)

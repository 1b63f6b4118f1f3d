"""What every command shares: one argparse style, the process set-up and logging, errors as one line and
an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rockir_jax import runtime
from rockir_jax.configuration import expand_path

if TYPE_CHECKING:
    from rockir_jax.retrieval.loading import LoadedModel

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def path(text: str) -> Path:
    """argparse ``type`` of every file or directory option: the path with ``~`` expanded."""
    return expand_path(text)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of command ``prog`` (e.g. ``rockir-evaluate``), with ``--verbose``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--verbose", action="store_true", help="also show other libraries' log lines (absl, orbax, TFDS)"
    )
    return parser


def run(
    body: Callable[[], None],
    *,
    verbose: bool = False,
    log_dir: Path | None = None,
    uses_jax: bool = True,
) -> None:
    """Runs a command's ``body``: logging and the JAX process set-up first (joining the other processes
    when launched as several, :func:`rockir_jax.runtime.maybe_initialize_distributed`), then the library
    call.

    The console shows the command's own lines; other libraries' log lines go to ``<log_dir>/log.txt``
    (commands with an output directory pass it), and to the console with ``verbose`` (the parser's
    ``--verbose``). A library error about the user's input (a missing file, a bad value, an unusable
    data set: all :class:`FileNotFoundError` or :class:`ValueError`) becomes one ``error: …`` message
    on stderr and exit status 2, not a traceback; Ctrl-C exits with 130.
    """
    runtime.configure_logging(log_dir, verbose)
    if uses_jax:
        runtime.set_up_command_line_run()
        runtime.maybe_initialize_distributed()
    try:
        body()
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose a model, shared by the commands that embed images."""
    group = parser.add_argument_group(
        "model (one of --workdir, --model-dir, --checkpoint + --config, --model vanilla)"
    )
    group.add_argument("--workdir", type=path, help="a training run (config.json + checkpoints/)")
    group.add_argument("--model-dir", type=path, help="an exported model (rockir-export's --out)")
    group.add_argument("--checkpoint", type=path, help="a checkpoints/ directory of a run")
    group.add_argument("--config", type=path, help="config file of --checkpoint (configs/*.py or .json)")
    group.add_argument("--step", type=int, help="checkpoint step (default: the best, else the latest)")
    group.add_argument("--model", choices=("vanilla",), help="the untrained baseline instead of a run")
    group.add_argument("--backbone", default="resnet34", help="backbone of --model vanilla")
    group.add_argument("--pretrained", type=path, help="ported ImageNet weights of --model vanilla")
    group.add_argument("--image-size", type=int, default=224, help="input size of --model vanilla")
    group.add_argument(
        "--orientations",
        type=int,
        metavar="{1,8}",
        help="average each image's embedding and prediction over its 8 orientations, or take it as it "
        "is (1); default: the run's config's test_time_orientations, 1 for --model vanilla",
    )


def model_from_arguments(args: argparse.Namespace) -> LoadedModel:
    """The model chosen by :func:`add_model_arguments`' options."""
    from rockir_jax.retrieval.loading import load_model  # the model stack, only for commands that embed

    return load_model(
        args.workdir,
        model_dir=args.model_dir,
        checkpoint=args.checkpoint,
        config=args.config,
        step=args.step,
        vanilla=args.backbone if args.model == "vanilla" else None,
        pretrained=args.pretrained,
        image_size=args.image_size,
        orientations=args.orientations,
    )

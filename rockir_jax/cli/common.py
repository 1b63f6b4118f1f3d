"""What every command shares: one argparse style, the process set-up, errors as one line and an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rockir_jax import runtime
from rockir_jax.retrieval.loading import LoadedModel, load_model

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The argument parser of command ``prog`` (e.g. ``rockir-evaluate``)."""
    return argparse.ArgumentParser(prog=prog, description=description)


def run(body: Callable[[], None], *, uses_jax: bool = True) -> None:
    """Runs a command's ``body``: the JAX process set-up first (joining the other processes when
    launched as several, see :func:`rockir_jax.runtime.maybe_initialize_distributed`), then the
    library call.

    A library error about the user's input (a missing file, a bad value, an unusable data set: all
    :class:`FileNotFoundError` or :class:`ValueError`) becomes one ``error: …`` message on stderr and
    exit status 2, not a traceback; Ctrl-C exits with 130.
    """
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
    group = parser.add_argument_group("model (one of --workdir, --checkpoint + --config, --model vanilla)")
    group.add_argument("--workdir", type=Path, help="a training run (config.json + checkpoints/)")
    group.add_argument("--checkpoint", type=Path, help="a checkpoints/ directory of a run")
    group.add_argument("--config", type=Path, help="config file of --checkpoint (configs/*.py or .json)")
    group.add_argument("--step", type=int, help="checkpoint step (default: the best, else the latest)")
    group.add_argument("--model", choices=("vanilla",), help="the untrained baseline instead of a run")
    group.add_argument("--backbone", default="resnet34", help="backbone of --model vanilla")
    group.add_argument("--pretrained", type=Path, help="ported ImageNet weights of --model vanilla")
    group.add_argument("--image-size", type=int, default=224, help="input size of --model vanilla")


def model_from_arguments(args: argparse.Namespace) -> LoadedModel:
    """The model chosen by :func:`add_model_arguments`' options."""
    return load_model(
        args.workdir,
        checkpoint=args.checkpoint,
        config=args.config,
        step=args.step,
        vanilla=args.backbone if args.model == "vanilla" else None,
        pretrained=args.pretrained,
        image_size=args.image_size,
    )

"""rockir-train: train a DSNN or Siamese baseline, validating and checkpointing as it goes.

    rockir-train --config configs/default.py --workdir runs/default [--config.KEY=VALUE ...]

The same as ``python -m rockir_jax.train``. Running it again in the same workdir resumes; see
:mod:`rockir_jax.training.trainer`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import jax

from rockir_jax import data
from rockir_jax.cli import common
from rockir_jax.configuration import load_config, override
from rockir_jax.training.trainer import NonFiniteLossError, train_and_evaluate

EXIT_NON_FINITE_LOSS = 3
_PREFIX = "--config."


def config_assignments(extra: Sequence[str], parser: argparse.ArgumentParser) -> list[str]:
    """``KEY=VALUE`` of each ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) in ``extra``; anything
    else is a usage error."""
    assignments, rest = [], list(extra)
    while rest:
        word = rest.pop(0)
        if not word.startswith(_PREFIX) or word == _PREFIX:
            parser.error(f"unrecognised argument {word!r} (config values are --config.KEY=VALUE)")
        key_value = word[len(_PREFIX) :]
        if "=" not in key_value:
            if not rest:
                parser.error(f"{word} needs a value")
            key_value = f"{key_value}={rest.pop(0)}"
        assignments.append(key_value)
    return assignments


def main(argv: Sequence[str] | None = None) -> None:
    """Parses ``argv`` (default: the command line) and trains."""
    parser = common.parser("rockir-train", __doc__.splitlines()[0].split(": ", 1)[1])
    parser.add_argument("--config", type=common.path, required=True, help="config file (configs/*.py)")
    parser.add_argument(
        "--workdir", type=common.path, required=True, help="run folder: checkpoints, metrics, log.txt"
    )
    parser.epilog = (
        "Any config value can be changed with --config.KEY=VALUE, e.g. --config.num_train_steps=50"
    )
    args, extra = parser.parse_known_args(argv)
    assignments = config_assignments(extra, parser)

    def body() -> None:
        config = override(load_config(args.config), assignments)
        try:
            train_and_evaluate(config, args.workdir)
        except data.DataValidationError as err:
            # Every process validates the same files and fails alike; process 0 reports for all.
            if jax.process_index() == 0:
                raise ValueError(f"the data set is not usable, nothing was trained:\n{err}") from None
            raise ValueError("the data set is not usable (process 0 reports why)") from None
        except NonFiniteLossError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(EXIT_NON_FINITE_LOSS)

    common.run(body, verbose=args.verbose, log_dir=args.workdir)


if __name__ == "__main__":
    main()

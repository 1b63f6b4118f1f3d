"""Every command: ``--help`` exits 0, and a user's mistake (a missing file, an unknown key, a value out of
range) ends in one ``error: …`` line and a non-zero exit, never a traceback."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from rockir_jax.cli import common

ROOT = Path(__file__).parents[1]
COMMANDS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _main(command: str):
    module, function = COMMANDS[command].split(":")
    return getattr(importlib.import_module(module), function)


def test_every_command_is_registered_and_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    assert {"rockir-train", "rockir-launch"} <= set(COMMANDS)
    assert [name for name in COMMANDS if name not in readme] == []


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as exited:
        _main(command)(["--help"])
    assert exited.value.code == 0
    assert f"usage: {command}" in capsys.readouterr().out


def test_python_m_rockir_jax_train_help_exits_zero():
    # absl's app.run exited 1 on --help; the module now runs the command.
    result = subprocess.run(
        [sys.executable, "-m", "rockir_jax.train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


def _one_error_line(capsys, command: str, args: list[str], pattern: str, code: int = 2) -> None:
    with pytest.raises(SystemExit) as exited:
        _main(command)(args)
    assert exited.value.code == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if re.match(r"^(error: |[\w-]+: error: )", line)]
    assert len(errors) == 1 and re.search(pattern, errors[0]), err


MISSING = "/nonexistent/rockir"
DEFAULT = "{root}/configs/default.py"  # absolute, so the tests pass from any working directory


@pytest.mark.parametrize(
    ("command", "args", "pattern"),
    [
        ("rockir-train", ["--config", "configs/nope.py", "--workdir", "{tmp}/run"], "no such config file"),
        ("rockir-train", ["--config", DEFAULT, "--workdir", "{tmp}/run", "--config.nope=1"],
         "nope: no such config key"),
        ("rockir-train", ["--config", DEFAULT, "--workdir", "{tmp}/run",
                          "--config.num_train_steps=-5"], "num_train_steps=-5 must be at least 1"),
        ("rockir-train", ["--config", DEFAULT, "--workdir", "{tmp}/run",
                          "--config.image_size=big"], "image_size=big: not an int"),
        ("rockir-train", ["--config", DEFAULT, "--workdir", "{tmp}/run", "--config.test_time_orientations=4"],
         r"test_time_orientations=4 must be one of \(1, 8\)"),
        ("rockir-search", ["--model", "vanilla", "--db", MISSING, "--query", MISSING, "--orientations", "2"],
         "orientations must be one of"),
        ("rockir-evaluate", ["--workdir", MISSING, "--db", MISSING, "--out", "{tmp}/e"], "no such"),
        ("rockir-export", ["--workdir", MISSING, "--out", "{tmp}/m"], "no such"),
        ("rockir-search", ["--workdir", MISSING, "--db", MISSING, "--query", MISSING], "no such"),
        ("rockir-search", ["--model", "vanilla", "--db", MISSING, "--query", MISSING, "-k", "0"],
         "-k must be at least 1"),
        ("rockir-search", ["--model", "vanilla", "--db", MISSING, "--query", MISSING, "--pixel-size", "-3"],
         "pixel size must be"),
        ("rockir-search", ["--model", "vanilla", "--db", MISSING, "--query", MISSING, "--pixel-size", "nan"],
         "pixel size must be"),
        ("rockir-search", ["--model", "vanilla", "--db", MISSING, "--query", MISSING,
                           "--pixel-size", "1e308"], "pixel size must be"),
        ("rockir-inspect", ["--config", "configs/nope.py", "--out", "{tmp}/p.png"], "no such config file"),
        ("rockir-compare", ["--out", "{tmp}/c", "--config", DEFAULT, "--set", "learnig_rate=1",
                            "--models", "Vanilla-R34"],
         "learnig_rate: no such config key"),
        ("rockir-prepare", ["--volumes", MISSING, "--out", "{tmp}/d", "--voxel-size", "2"], "no such"),
        ("rockir-port", ["--pth", MISSING, "--out", "{tmp}/w"], "no such"),
        ("rockir-launch", ["--processes", "0", "--", "true"], "--processes must be at least 1"),
    ],
)  # fmt: skip
def test_user_errors_are_one_line(command, args, pattern, capsys, tmp_path):
    _one_error_line(capsys, command, [a.format(tmp=tmp_path, root=ROOT) for a in args], pattern)


def test_run_turns_input_errors_into_exit_two(capsys):
    def body():
        raise FileNotFoundError("x.csv: no such file")

    with pytest.raises(SystemExit) as exited:
        common.run(body, uses_jax=False)
    assert exited.value.code == 2 and capsys.readouterr().err == "error: x.csv: no such file\n"


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("rockir-export", ["--workdir", MISSING, "--out", "{tmp}/m"]),
        ("rockir-prepare", ["--volumes", MISSING, "--out", "{tmp}/d"]),
        ("rockir-synthesize", ["--out", "{tmp}/s"]),
        ("rockir-serve", ["--index", MISSING]),
    ],
)
def test_verbose_reaches_the_logging_set_up(command, args, monkeypatch, tmp_path):
    seen = []

    def configure_logging(log_dir, verbose=False):
        seen.append(verbose)
        raise KeyboardInterrupt  # stop before any work; run() turns it into exit 130

    monkeypatch.setattr(common.runtime, "configure_logging", configure_logging)
    with pytest.raises((SystemExit, KeyboardInterrupt)):
        _main(command)([*(a.format(tmp=tmp_path) for a in args), "--verbose"])
    assert seen == [True]


def test_package_warnings_are_one_console_line_without_a_source_path(tmp_path, capsys):
    import warnings

    from rockir_jax import runtime
    from rockir_jax.data import metadata

    runtime.configure_logging(tmp_path, verbose=False)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = runtime._show_warning
        warnings.warn_explicit("2 sample(s) have slices in several splits", UserWarning, metadata.__file__, 1)
        warnings.warn_explicit("an other library's deprecation", DeprecationWarning, "/elsewhere/lib.py", 7)
    err = capsys.readouterr().err
    assert err == "warning: 2 sample(s) have slices in several splits\n"
    assert "/elsewhere/lib.py:7: DeprecationWarning: an other library's deprecation" in (
        (tmp_path / "log.txt").read_text()
    )


def test_target_scale_is_logged_as_short_numbers(caplog):
    from types import SimpleNamespace

    import numpy as np

    from configs import default
    from rockir_jax.training import trainer

    targets = np.array([[0.1, -2.0], [0.156, -1.85148], [0.12, -2.1]], np.float32)
    with caplog.at_level("INFO", logger="rockir_jax"):
        trainer._loss_fn(default.get_config(), SimpleNamespace(targets=targets))
    (line,) = [r.getMessage() for r in caplog.records if "std" in r.getMessage()]
    assert re.fullmatch(
        r"regression errors scaled by the training targets' std: [\d.]{1,8}, [\d.]{1,8}", line
    )

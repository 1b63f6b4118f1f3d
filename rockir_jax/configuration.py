"""Training configurations: ``ml_collections`` config files, a run's ``config.json``, overrides, and
the expansion of their paths."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import ml_collections

PATH_KEYS = ("data.root", "data.metadata", "data.cache_dir", "pretrained")
"""The config keys that hold file or directory paths (``~`` expanded by :func:`expand_paths`)."""


def expand_path(path: str | Path) -> Path:
    """``path`` with a leading ``~`` or ``~user`` expanded: the one rule for every path a user gives."""
    return Path(path).expanduser()


def expand_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Expands ``~`` in the config's :data:`PATH_KEYS`, in place; returns ``config``.

    Without this a ``~/.cache`` in a config would be a folder named ``~`` in the working directory.
    Empty values (no path) stay empty; values stay strings, as config files and ``config.json`` have them.
    """
    for key in PATH_KEYS:
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node.get(parent) if node is not None else None
        if node is not None and node.get(name):
            node[name] = str(expand_path(node[name]))
    return config


def load_config(path: str | Path) -> ml_collections.ConfigDict:
    """A config from a ``configs/*.py`` file (its ``get_config()``) or a run's ``config.json``, its paths
    expanded (:func:`expand_paths`)."""
    path = expand_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    if path.suffix == ".json":
        return expand_paths(ml_collections.ConfigDict(json.loads(path.read_text())))
    if (path.parent / "__init__.py").is_file():
        # Config files import their siblings as a package (``from configs import default``).
        sys.path.insert(0, str(path.parent.parent.absolute()))
    spec = importlib.util.spec_from_file_location(f"_rockir_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return expand_paths(module.get_config())


def _parse_like(current: object, text: str, key: str) -> object:
    """``text`` as a value of ``current``'s type (bool before int: a bool is an int in Python)."""
    try:
        if isinstance(current, bool):
            words = {"true": True, "1": True, "false": False, "0": False}
            if text.lower() not in words:
                raise ValueError
            return words[text.lower()]
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text) if text else ()
            return tuple(value) if isinstance(value, (tuple, list)) else (value,)
    except (ValueError, SyntaxError):
        kind = type(current).__name__
        raise ValueError(f"{key}={text}: not {'an' if kind[0] in 'aeiou' else 'a'} {kind}") from None
    return text


def override(config: ml_collections.ConfigDict, assignments: Sequence[str]) -> ml_collections.ConfigDict:
    """Sets ``KEY=VALUE`` assignments (``learning_rate=1e-3``, ``data.augment=dihedral``) in place, each
    value read as the type the key already has; returns ``config`` with its paths expanded."""
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals:
            raise ValueError(f"{assignment!r}: expected KEY=VALUE")
        *parents, name = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            raise ValueError(f"{key}: no such config key")
        node[name] = _parse_like(node[name], text, key)
    return expand_paths(config)

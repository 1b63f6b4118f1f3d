"""Training configurations: ``ml_collections`` config files, a run's ``config.json``, overrides, and
the expansion of their paths."""

from __future__ import annotations

import importlib.util
import json
import sys
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

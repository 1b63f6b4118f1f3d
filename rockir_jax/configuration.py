"""Training configurations: ``ml_collections`` config files, a run's ``config.json``, overrides."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import ml_collections


def load_config(path: str | Path) -> ml_collections.ConfigDict:
    """A config from a ``configs/*.py`` file (its ``get_config()``) or a run's ``config.json``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    if path.suffix == ".json":
        return ml_collections.ConfigDict(json.loads(path.read_text()))
    if (path.parent / "__init__.py").is_file():
        # Config files import their siblings as a package (``from configs import default``).
        sys.path.insert(0, str(path.parent.parent.absolute()))
    spec = importlib.util.spec_from_file_location(f"_rockir_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()

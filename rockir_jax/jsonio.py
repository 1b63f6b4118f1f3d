"""Strict JSON for reports and logs: undefined numbers are written as ``null``.

``json.dumps`` writes NaN and infinities as ``NaN`` and ``Infinity``, which are not JSON: jq, browsers
and strict readers refuse them. R² of a constant target, for one, is undefined.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def finite(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth of dicts, lists and tuples, as ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def json_text(report: Any) -> str:
    """``report`` as indented strict JSON (a file's whole text)."""
    return json.dumps(finite(report), indent=2, allow_nan=False) + "\n"


def json_line(record: Any) -> str:
    """``record`` as one line of strict JSON (a JSON-lines record)."""
    return json.dumps(finite(record), allow_nan=False) + "\n"


def read_versioned(path: Path, file_format: str, version: int) -> dict[str, Any]:
    """The JSON object in ``path``, checked to be a ``file_format`` file of ``version``; every problem is
    a ValueError naming the file."""
    try:
        record = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(record, dict) or record.get("format") != file_format:
        raise ValueError(f"{path}: not a {file_format} file")
    if record.get("version") != version:
        raise ValueError(f"{path}: version {record.get('version')}, expected {version}")
    return record

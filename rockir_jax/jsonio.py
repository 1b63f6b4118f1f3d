"""Strict JSON for reports and logs: undefined numbers are written as ``null``.

``json.dumps`` writes NaN and infinities as ``NaN`` and ``Infinity``, which are not JSON: jq, browsers
and strict readers refuse them. R² of a constant target, for one, is undefined.
"""

from __future__ import annotations

import json
import math
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

"""Strict JSON: what every JSON file the project writes goes through.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which no strict parser (a
browser, ``jq``, most JSON libraries) reads. An undefined value (β over fewer than two
detections, say) is ``null`` here instead.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth, replaced by ``None``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` that writes strict JSON (non-finite floats become ``null``)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)

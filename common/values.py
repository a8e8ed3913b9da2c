"""Small value conversions shared by readers and views."""
from __future__ import annotations

import math
from typing import Any


def finite_or_none(x: Any) -> float | None:
    """`x` as a float, or None for NaN and for what is not a number (None, text, a missing cell)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v

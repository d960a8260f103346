"""Durations as users write them: 1.5 (seconds), "500ms", "30s", "5m", "1h", "2d"."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(value: Any) -> Any:
    """Seconds as a float; numbers pass through, strings take a unit suffix."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '500ms', '30s'")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(
                f"{value!r} is not a duration: use seconds (1.5) or a unit (500ms, 30s, 5m, 1h, 2d)"
            )
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


Duration = Annotated[float, BeforeValidator(parse_duration)]


def to_millis(seconds: float) -> int:
    """Whole milliseconds for an AMQP argument, rounded up so a delay is never shortened."""
    return max(1, math.ceil(round(seconds * 1000, 6)))

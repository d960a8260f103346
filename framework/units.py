"""Durations and sizes as users write them: 1.5 (seconds), "500ms", "30s", "5m", "1h",
"2d"; 1048576 (bytes), "500MB", "20GB", "1GiB"."""

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


_SIZE_UNITS = {
    "": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b|b)?\s*$", re.IGNORECASE)


def parse_size(value: Any) -> Any:
    """Bytes as an int; strings take a unit (kB, MB, GB, TB; KiB, MiB, GiB, TiB)."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string such as '500MB', '20GB'")
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a size: use bytes or a unit (500MB, 20GB, 1GiB)")
        return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()])
    return value


Size = Annotated[int, BeforeValidator(parse_size)]


def millis_text(ms: int) -> str:
    """Whole milliseconds as the shortest duration a file reads back: ``30s``, ``1500ms``."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def broker_age(seconds: float) -> str:
    """A retention age as RabbitMQ's ``x-max-age`` writes it: ``30D``, ``12h``, ``90m``, ``45s``."""
    whole = max(1, math.ceil(round(seconds, 6)))
    for unit, size in (("D", 86400), ("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"

"""Header and property values as kanin reads them, whatever client sent them.

AMQP field tables carry strings as ``longstr`` (which pamqp decodes to ``str``, or to
``bytes`` when they are not UTF-8) and raw bytes as byte arrays (``bytearray``); other
clients send ids as either. Every header kanin reads goes through :func:`text` or
:func:`integer`, so ``"k-1"``, ``b"k-1"``, ``bytearray(b"k-1")`` and ``memoryview(b"k-1")``
are one and the same key, causation id or origin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

BYTES = (bytes, bytearray, memoryview)


def text(value: Any) -> str | None:
    """A header or property value as text: bytes-like values decoded as UTF-8."""
    if value is None or type(value) is str:
        return value
    if isinstance(value, BYTES):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def integer(value: Any) -> int | None:
    """An integer header as foreign clients may send it (int, text or bytes); else None."""
    if value is None or type(value) is int:
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, BYTES):
        value = bytes(value).decode("utf-8", errors="replace")
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def trace_id(headers: Mapping[str, Any]) -> str | None:
    """The trace id of a W3C ``traceparent`` header, if it holds one."""
    parts = (text(headers.get("traceparent")) or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def get_text(headers: Mapping[str, Any], name: str) -> str | None:
    return text(headers.get(name))


def plain(headers: Mapping[str, Any]) -> dict[str, Any]:
    """``headers`` to publish again: bytes-like values as text, the rest as they are
    (pamqp would write a ``bytearray`` back as a byte array, ``bytes`` not at all)."""
    return {k: text(v) if isinstance(v, BYTES) else v for k, v in headers.items()}

"""A stream queue of the embedded broker: an append-only log with offsets.

As in RabbitMQ: every message routed to the stream is kept with the next offset (0, 1,
...) and the time it arrived; a consumer reads from where ``x-stream-offset`` says
(``first``, ``last``, ``next``, an offset, or a time) and every delivery carries its
``x-stream-offset`` header; reading takes nothing away. Retention (``x-max-length-bytes``,
``x-max-age``) drops the oldest messages one by one, where RabbitMQ drops whole segment
files: the embedded broker keeps at most what RabbitMQ keeps, sometimes less.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

_AGE = re.compile(r"([0-9]+)([YMDhms])")
_SECONDS = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}


@dataclass(frozen=True)
class Entry:
    offset: int
    at: datetime
    body: bytes
    properties: Any
    exchange: str
    routing_key: str


class StreamLog:
    """The entries of one stream, oldest first."""

    def __init__(self, arguments: dict[str, Any]) -> None:
        self.entries: deque[Entry] = deque()
        self.next_offset = 0
        self.size = 0  # body bytes held
        limit = arguments.get("x-max-length-bytes")
        self.max_bytes = None if limit is None else int(limit)
        age = _AGE.fullmatch(str(arguments.get("x-max-age", "")))
        self.max_age = None if age is None else timedelta(seconds=int(age[1]) * _SECONDS[age[2]])

    def append(self, body: bytes, properties: Any, exchange: str, routing_key: str) -> Entry:
        entry = Entry(self.next_offset, datetime.now(UTC), body, properties, exchange, routing_key)
        self.entries.append(entry)
        self.next_offset += 1
        self.size += len(body)
        self.trim()
        return entry

    def trim(self) -> None:
        """Drop the oldest entries past the retention (never the newest one)."""
        oldest = datetime.now(UTC) - self.max_age if self.max_age is not None else None
        while len(self.entries) > 1:
            head = self.entries[0]
            too_big = self.max_bytes is not None and self.size > self.max_bytes
            too_old = oldest is not None and head.at < oldest
            if not (too_big or too_old):
                return
            self.entries.popleft()
            self.size -= len(head.body)

    def start(self, offset: Any) -> int:
        """The first offset a consumer asking for ``offset`` reads."""
        self.trim()
        first = self.entries[0].offset if self.entries else self.next_offset
        if offset is None or offset == "next":
            return self.next_offset
        if offset == "first":
            return first
        if offset == "last":
            return self.entries[-1].offset if self.entries else self.next_offset
        if isinstance(offset, datetime):
            moment = offset if offset.tzinfo else offset.replace(tzinfo=UTC)
            later = (e.offset for e in self.entries if e.at >= moment)
            return next(later, self.next_offset)
        if isinstance(offset, int) and not isinstance(offset, bool):
            return max(first, offset)
        raise ValueError(f"x-stream-offset {offset!r}: first, last, next, an offset or a time")

    def at(self, position: int) -> Entry | None:
        """The entry at ``position``, or the oldest after it if retention dropped it."""
        if not self.entries or position >= self.next_offset:
            return None
        index = max(0, position - self.entries[0].offset)
        return self.entries[index]

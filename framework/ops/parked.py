"""A message parked in a dead-letter queue, as an operator reads it, and the copy that
sends it back.

kanin's DLQ copies carry the error headers of the wire contract (``x-error-type``,
``x-failed-at``, ...). A message the broker dead-lettered itself (rejected, expired,
over a length or delivery limit) has none: it carries ``x-death``, and reads here as
the error type ``broker:<reason>`` failed at the time in ``x-death``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from framework.headers import BYTES, integer, plain, text, trace_id
from framework.transport.base import Delivery, Properties

# Headers a replayed copy leaves behind: why and where it failed (kanin's and the broker's).
ERROR_HEADERS = frozenset(
    {
        "x-error-type",
        "x-error-message",
        "x-failed-at",
        "x-failed-consumer",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)
_PROPERTIES = (
    "content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
    "reply_to", "expiration", "message_id", "timestamp", "message_type", "user_id", "app_id",
)  # fmt: skip


def parse_time(value: Any) -> datetime | None:
    """A failed-at value (ISO 8601 text, or the datetime of ``x-death``), in UTC."""
    if isinstance(value, datetime):
        moment = value
    else:
        raw = text(value)
        if raw is None:
            return None
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Parked:
    """One delivery read from a DLQ, with what it says about its failure."""

    def __init__(self, delivery: Delivery) -> None:
        self.delivery = delivery
        headers = delivery.headers
        self.properties = delivery.properties
        deaths = headers.get("x-death")
        death = deaths[0] if isinstance(deaths, list) and deaths else {}
        self.death: dict[str, Any] = death if isinstance(death, dict) else {}
        kanin_error = text(headers.get("x-error-type"))
        if kanin_error is not None or not self.death:
            self.error_type = kanin_error or "unknown"
            self.error_message = text(headers.get("x-error-message")) or ""
            self.failed_at = parse_time(headers.get("x-failed-at"))
            self.consumer = text(headers.get("x-failed-consumer")) or ""
        else:
            reason = text(self.death.get("reason")) or "unknown"
            self.error_type = f"broker:{reason}"
            self.error_message = f"{reason} in queue {text(self.death.get('queue'))}"
            self.failed_at = parse_time(self.death.get("time"))
            self.consumer = ""
        self.message_id = text(self.properties.message_id)
        self.idempotency_key = text(headers.get("x-idempotency-key")) or self.message_id
        self.attempt = integer(headers.get("x-attempt"))
        self.replays = integer(headers.get("x-replay-count")) or 0

    @property
    def group(self) -> tuple[str, str]:
        """The failure group: error type and the consumer class that failed."""
        return self.error_type, self.consumer

    @property
    def trace_id(self) -> str | None:
        return trace_id(self.delivery.headers)

    def matches_id(self, ids: Collection[str]) -> bool:
        """Named by its ``message_id`` or its idempotency key (the id it was first
        published with: a DLQ copy has an id of its own)."""
        return self.message_id in ids or self.idempotency_key in ids

    def summary(self) -> dict[str, Any]:
        """What ``kanin dlq show`` prints, as JSON-ready values (the body aside)."""
        headers = self.delivery.headers
        return {
            "message_id": self.message_id,
            "idempotency_key": self.idempotency_key,
            "correlation_id": text(self.properties.correlation_id),
            "causation_id": text(headers.get("x-causation-id")),
            "type": text(self.properties.message_type),
            "version": integer(headers.get("x-event-version")),
            "attempt": self.attempt,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "consumer": self.consumer or None,
            "original_exchange": text(headers.get("x-original-exchange"))
            or text(self.death.get("exchange")),
            "original_routing_key": text(headers.get("x-original-routing-key"))
            or _first(self.death.get("routing-keys")),
            "trace_id": self.trace_id,
            "replay_count": self.replays,
            "headers": json_ready(headers),
        }

    def record(self) -> dict[str, Any]:
        """One line of ``kanin dlq export``: the summary, the properties and the body
        (as text when it is UTF-8, else base64)."""
        body = self.delivery.body
        try:
            encoded, encoding = body.decode("utf-8"), "text"
        except UnicodeDecodeError:
            encoded, encoding = base64.b64encode(body).decode("ascii"), "base64"
        properties = {
            name: json_ready(getattr(self.properties, name))
            for name in _PROPERTIES
            if getattr(self.properties, name) is not None
        }
        return {
            **self.summary(),
            "properties": properties,
            "body": encoded,
            "body_encoding": encoding,
        }


def body_text(body: bytes) -> str:
    """The body to read: pretty JSON when it is JSON, else escaped bytes and the size."""
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return f"{body!r} ({len(body)} bytes, not JSON)"


def replay_properties(delivery: Delivery, at: datetime) -> Properties:
    """The properties of the copy sent back to work: every property and header kept (its
    ``message_id`` and idempotency key too, so idempotency still holds) except the error
    headers; ``x-attempt`` back to 1, ``x-replayed-at`` and ``x-replay-count`` added."""
    headers = {k: v for k, v in plain(delivery.headers).items() if k not in ERROR_HEADERS}
    key = text(headers.get("x-idempotency-key")) or text(delivery.properties.message_id)
    if key:
        headers["x-idempotency-key"] = key
    headers["x-attempt"] = 1
    headers["x-replayed-at"] = at.astimezone(UTC).isoformat(timespec="milliseconds")
    headers["x-replay-count"] = (integer(delivery.headers.get("x-replay-count")) or 0) + 1
    fields = {name: getattr(delivery.properties, name) for name in _PROPERTIES}
    return Properties(**fields, headers=headers)


def json_ready(value: Any) -> Any:
    """A header or property value as JSON can hold it."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, datetime):
        return parse_time(value).isoformat()  # type: ignore[union-attr]
    if isinstance(value, BYTES):
        return text(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _first(value: Any) -> str | None:
    return text(value[0]) if isinstance(value, list) and value else None

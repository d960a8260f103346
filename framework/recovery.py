"""What happens to a message whose handler failed, and the copies that carry it there.

``classify`` decides between a delayed retry and the DLQ; ``retry_message`` and
``dead_letter_message`` build the properties of the copy published to the wait queue or
the DLQ (the wire contract's headers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from framework.errors import Reject, Retry
from framework.events import DecodeError, new_message_id
from framework.headers import plain, text
from framework.retry import RetryPolicy
from framework.transport.base import Delivery, Properties

Action = Literal["retry", "dead_letter"]
ERROR_MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class Verdict:
    action: Action
    error_type: str
    reason: str
    delay: float | None = None  # a handler's Retry(delay=...), at most the wait queue's TTL


def classify(exc: BaseException, attempt: int, policy: RetryPolicy) -> Verdict:
    """Retry later, or park in the DLQ now: ``Reject`` and undecodable messages never retry."""
    if isinstance(exc, Reject):
        return Verdict("dead_letter", "Reject", exc.reason)
    if isinstance(exc, DecodeError):
        return Verdict("dead_letter", exc.error_type, str(exc))
    if isinstance(exc, Retry):
        verdict = Verdict("retry", "Retry", exc.reason, exc.delay)
    elif isinstance(exc, TimeoutError):
        verdict = Verdict("retry", "TimeoutError", "timeout")
    else:
        verdict = Verdict("retry", type(exc).__name__, str(exc) or type(exc).__name__)
    if attempt >= policy.attempts:
        reason = f"gave up after {attempt} attempt{'s' if attempt > 1 else ''}: {verdict.reason}"
        return Verdict("dead_letter", verdict.error_type, reason)
    return verdict


def _copy(properties: Properties, headers: dict[str, Any], **changes: Any) -> Properties:
    fields = {
        name: getattr(properties, name)
        for name in (
            "content_type",
            "content_encoding",
            "delivery_mode",
            "priority",
            "correlation_id",
            "reply_to",
            "expiration",
            "message_id",
            "timestamp",
            "message_type",
            "user_id",
            "app_id",
        )
    }
    fields["headers"] = headers
    fields.update(changes)
    return Properties(**fields)


def _origin(delivery: Delivery) -> dict[str, Any]:
    """Where the message was first published, kept across retries."""
    exchange = text(delivery.headers.get("x-original-exchange"))
    routing_key = text(delivery.headers.get("x-original-routing-key"))
    return {
        "x-original-exchange": delivery.exchange if exchange is None else exchange,
        "x-original-routing-key": delivery.routing_key if routing_key is None else routing_key,
    }


def _identity(delivery: Delivery) -> dict[str, Any]:
    """A republished message gets a fresh message_id; its idempotency key stays the same."""
    key = text(delivery.headers.get("x-idempotency-key")) or text(delivery.properties.message_id)
    return {"x-idempotency-key": key} if key else {}


def retry_message(
    delivery: Delivery,
    attempt: int,
    verdict: Verdict,
    ttl_ms: int,
    next_attempt: int | None = None,
) -> Properties:
    """Properties for the copy sent to ``<queue>.retry.<attempt>``; it comes back as
    ``next_attempt`` (default ``attempt + 1``)."""
    headers = {**plain(delivery.headers), **_origin(delivery), **_identity(delivery)}
    headers["x-attempt"] = attempt + 1 if next_attempt is None else next_attempt
    expiration = None
    if verdict.delay is not None:
        expiration = str(min(ttl_ms, max(0, round(verdict.delay * 1000))))
    return _copy(delivery.properties, headers, message_id=new_message_id(), expiration=expiration)


def dead_letter_message(delivery: Delivery, verdict: Verdict, consumer: str) -> Properties:
    """Properties for the copy parked in ``<queue>.dlq``: the error headers added."""
    headers = {**plain(delivery.headers), **_origin(delivery), **_identity(delivery)}
    headers.update(
        {
            "x-error-type": verdict.error_type,
            "x-error-message": verdict.reason[:ERROR_MESSAGE_LIMIT],
            "x-failed-at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "x-failed-consumer": consumer,
        }
    )
    headers.setdefault("x-attempt", 1)
    return _copy(delivery.properties, headers, message_id=new_message_id(), expiration=None)

"""The retry policy: how many attempts a message gets and how long each wait lasts.

Attempt 1 is the first delivery. After a failed attempt ``n`` (``n < attempts``) the
message waits ``delay(n)`` in the wait queue ``<queue>.retry.<n>``; after the last
attempt it goes to ``<queue>.dlq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from framework.errors import Reject, Retry
from framework.events import DecodeError, new_message_id
from framework.transport.amqp import Properties
from framework.units import Duration, to_millis

if TYPE_CHECKING:
    from framework.transport.amqp import Delivery

MAX_ATTEMPTS = 50


class RetryPolicy(BaseModel):
    """Attempts and backoff of broker-side (delayed) retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(3, ge=1, le=MAX_ATTEMPTS, description="deliveries in all, first included")
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial: Duration = Field(1.0, gt=0, description="seconds before the second attempt")
    multiplier: float = Field(2.0, ge=1.0, le=100.0, description="growth per attempt (exponential)")
    max: Duration = Field(300.0, gt=0, description="cap on any one delay, seconds")
    immediate: int = Field(0, ge=0, le=10, description="fast tries in process per attempt")
    immediate_delay: Duration = Field(0.1, ge=0, description="pause between fast tries")

    @model_validator(mode="after")
    def _check_cap(self) -> RetryPolicy:
        if self.max < self.initial:
            raise ValueError(f"max ({self.max:g}s) is smaller than initial ({self.initial:g}s)")
        return self

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if not 1 <= attempt < self.attempts:
            raise ValueError(f"attempt {attempt} has no delay (attempts={self.attempts})")
        if self.backoff == "fixed":
            return min(self.initial, self.max)
        return float(min(self.initial * self.multiplier ** (attempt - 1), self.max))

    def delays_ms(self) -> list[int]:
        """The wait queues' TTLs in milliseconds, for attempts 1 .. attempts-1."""
        return [to_millis(self.delay(n)) for n in range(1, self.attempts)]


# --- classification: what happens to a message after its handler failed ---------------

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


# --- routing: the message to publish for a retry or a dead letter ----------------------


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
    headers = delivery.headers
    return {
        "x-original-exchange": headers.get("x-original-exchange", delivery.exchange),
        "x-original-routing-key": headers.get("x-original-routing-key", delivery.routing_key),
    }


def _identity(delivery: Delivery) -> dict[str, Any]:
    """A republished message gets a fresh message_id; its idempotency key stays the same."""
    key = delivery.headers.get("x-idempotency-key") or delivery.properties.message_id
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
    headers = {**delivery.headers, **_origin(delivery), **_identity(delivery)}
    headers["x-attempt"] = attempt + 1 if next_attempt is None else next_attempt
    expiration = None
    if verdict.delay is not None:
        expiration = str(min(ttl_ms, max(0, round(verdict.delay * 1000))))
    return _copy(delivery.properties, headers, message_id=new_message_id(), expiration=expiration)


def dead_letter_message(delivery: Delivery, verdict: Verdict, consumer: str) -> Properties:
    """Properties for the copy parked in ``<queue>.dlq``: the error headers added."""
    headers = {**delivery.headers, **_origin(delivery), **_identity(delivery)}
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

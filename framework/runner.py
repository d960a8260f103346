"""One consumer class at work on its queue: the path of every message.

delivery -> decode (event class by ``type``) -> idempotency claim -> handler (immediate
retries, timeout) -> settle: ack, or move to a wait queue or the DLQ (confirmed) and then
ack. Nothing is acked before its handler and any move succeeded; a message whose move
fails goes back to its queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, fields
from typing import Any

from framework.consumer import Consumer, Context
from framework.errors import KaninError, Reject, Retry
from framework.events import DecodeError, Event
from framework.headers import integer, text
from framework.histogram import Histogram
from framework.idempotency import IdempotencyStore, Session, Status, StoreUnavailable, scoped_key
from framework.limits import Limits
from framework.logs import FLOW
from framework.publisher import Publisher
from framework.recovery import Verdict, classify, dead_letter_message, retry_message
from framework.retry import RetryPolicy
from framework.settings import Settings
from framework.topology.model import QueueSpec
from framework.tracing import Tracing, current, failed
from framework.transport import Delivery, Properties

log = logging.getLogger("kanin.worker")
POSTPONE_MS = 1000  # how long an in-progress or store-blocked message waits before its next try
STORE_WARNING = 10.0  # seconds between two warnings that the idempotency store fails


@dataclass
class Stats:
    received: int = 0
    acked: int = 0  # acknowledgements sent (handled, duplicates and moved messages)
    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    returned: int = 0  # given back to the queue (shutdown, or a failed settlement)
    duplicates: int = 0  # already handled: acked without calling the handler
    postponed: int = 0  # key in progress elsewhere, or store down: tried again shortly
    no_key: int = 0  # handled without deduplication: no key to deduplicate by

    def __str__(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


def attempt_of(headers: dict[str, Any]) -> int:
    return max(1, integer(headers.get("x-attempt")) or 1)


class Runner:
    """One consumer class at work on its queue."""

    def __init__(
        self,
        cls: type[Consumer],
        spec: QueueSpec,
        *,
        settings: Settings,
        publisher: Publisher,
        tracing: Tracing,
        store: IdempotencyStore | None = None,
    ) -> None:
        self.cls = cls
        self.consumer = cls()
        self.name = cls.consumer_name()
        self.spec = spec
        self.queue = spec.name
        self.policy = spec.retry or RetryPolicy(attempts=1)
        self.ttls = self.policy.delays_ms()
        self.events = cls.event_classes()
        self.only: type[Event] | None = None
        if len(self.events) == 1:
            self.only = next(iter(self.events.values()))
        self.prefetch = cls.prefetch or settings.prefetch
        self.concurrency = cls.concurrency or settings.concurrency
        self.limit = (
            asyncio.Semaphore(self.concurrency) if self.concurrency < self.prefetch else None
        )
        self.store = store
        self.lease = settings.idempotency_lease
        self.retention = cls.idempotency_retention or settings.idempotency_retention
        self.limits = Limits(
            cls.max_body_bytes or settings.max_body_bytes,
            settings.max_json_depth,
            settings.max_headers,
            settings.max_header_bytes,
        )
        self.publisher = publisher
        self.stats = Stats()
        self._store_warned = -STORE_WARNING  # when the store's failure was last logged
        self.durations = Histogram()
        self.tracing = tracing
        self.in_flight: set[asyncio.Task[Any]] = set()
        self.log = logging.getLogger(f"kanin.consumer.{cls.__name__}")

    async def on_delivery(self, delivery: Delivery) -> None:
        task = asyncio.current_task()
        assert task is not None  # every transport runs each delivery in a task of its own
        self.in_flight.add(task)
        headers, properties = delivery.headers, delivery.properties
        attempt = attempt_of(headers)
        identity = text(headers.get("x-idempotency-key")) or text(properties.message_id) or "-"
        flow = FLOW.set((text(properties.correlation_id) or identity, identity))
        try:
            if self.limit is None:
                with self.tracing.process(delivery, self.queue, attempt):
                    await self.process(delivery, attempt)
            else:
                async with self.limit:
                    with self.tracing.process(delivery, self.queue, attempt):
                        await self.process(delivery, attempt)
        except asyncio.CancelledError:
            if not delivery.channel.is_settled(delivery.delivery_tag):
                await delivery.channel.nack(delivery.delivery_tag, requeue=True)
                self.stats.returned += 1
            raise
        finally:
            FLOW.reset(flow)
            self.in_flight.discard(task)

    async def process(self, delivery: Delivery, attempt: int) -> None:
        self.stats.received += 1
        try:
            event = self.decode(delivery)
        except DecodeError as exc:
            await self.recover(delivery, attempt, exc)
            return
        key = self.key(delivery, event)
        token, session = "", None
        if key is not None and self.store is not None:
            try:
                claim = await self.store.claim(key, self.lease)
            except StoreUnavailable as exc:
                self.store_down(str(exc))
                await self.postpone(delivery, attempt, str(exc))
                return
            if claim.status is Status.DONE:
                delivery.channel.ack(delivery.delivery_tag)
                self.stats.duplicates += 1
                if self.tracing.enabled:
                    _event("duplicate", {"kanin.reason": "already handled"})
                self.log.debug("duplicate %s (key %s) acked, not handled", _id(delivery), key)
                return
            if claim.status is Status.IN_PROGRESS:
                await self.postpone(delivery, attempt, f"key {key} is being handled elsewhere")
                return
            token, session = claim.token, claim.session
        started = time.perf_counter()
        try:
            await self.call(event, self.context(delivery, attempt, session))
        except BaseException as exc:
            self.durations.observe(time.perf_counter() - started)
            if token:
                await self.forget(key, token)
            if not isinstance(exc, Exception):
                raise
            await self.recover(delivery, attempt, exc)
            return
        self.durations.observe(time.perf_counter() - started)
        if token and not await self.remember(key, token, session is not None):
            await self.postpone(delivery, attempt, "the handler's transaction did not commit")
            return
        delivery.channel.ack(delivery.delivery_tag)
        self.stats.handled += 1

    def key(self, delivery: Delivery, event: Event) -> str | None:
        """``x-idempotency-key``, else the consumer's ``idempotency_key(event)``, else
        ``message_id``; scoped to this consumer and hashed."""
        raw = text(delivery.headers.get("x-idempotency-key"))
        if not raw:
            raw = self.consumer.idempotency_key(event)
        if not raw:
            raw = text(delivery.properties.message_id)
        if not raw:
            self.stats.no_key += 1
            if self.stats.no_key == 1:
                self.log.warning("message without an idempotency key: handled without dedup")
            return None
        return scoped_key(self.name, raw)

    async def remember(self, key: str | None, token: str, committing: bool) -> bool:
        """Mark the key done; False if that was the commit of the handler's own
        transaction (the inbox) and it failed: then nothing the handler did happened."""
        assert self.store is not None and key is not None
        try:
            await self.store.complete(key, token, self.retention)
        except StoreUnavailable as exc:
            if committing:
                self.log.warning("the transaction of key %s did not commit (%s)", key, exc)
                return False
            self.log.error("handled, but could not mark key %s done (%s)", key, exc)
        return True

    async def forget(self, key: str | None, token: str) -> None:
        assert self.store is not None and key is not None
        try:
            await self.store.release(key, token)
        except StoreUnavailable as exc:
            self.log.warning("could not release key %s (%s): its lease will expire", key, exc)

    def decode(self, delivery: Delivery) -> Event:
        self.limits.check(delivery.body, delivery.headers)
        event_type = delivery.properties.message_type
        cls = self.events.get(event_type) if event_type else self.only
        if cls is None:
            known = ", ".join(sorted(self.events))
            what = f"type {event_type!r}" if event_type else "a message without a type"
            raise DecodeError(
                f"{self.name} has no handler for {what} (it handles {known})", "UnknownEventType"
            )
        version = integer(delivery.headers.get("x-event-version")) or None
        return cls.from_json(delivery.body, version)

    def context(self, delivery: Delivery, attempt: int, session: Session | None = None) -> Context:
        return Context(self.queue, delivery, attempt, self.log, self.publisher, session)

    async def call(self, event: Event, ctx: Context) -> None:
        if not self.policy.immediate:
            await self.call_once(event, ctx)
            return
        # tenacity is loaded by the first consumer with immediate retries, not by every worker
        from tenacity import (
            AsyncRetrying,
            retry_if_not_exception_type,
            stop_after_attempt,
            wait_fixed,
        )

        async for fast_try in AsyncRetrying(
            stop=stop_after_attempt(self.policy.immediate + 1),
            wait=wait_fixed(self.policy.immediate_delay),
            retry=retry_if_not_exception_type((Reject, Retry, DecodeError)),
            reraise=True,
        ):
            with fast_try:
                await self.call_once(event, ctx)

    async def call_once(self, event: Event, ctx: Context) -> None:
        if self.cls.timeout is None:
            await self.consumer.handle(event, ctx)
            return
        async with asyncio.timeout(self.cls.timeout):
            await self.consumer.handle(event, ctx)

    async def recover(self, delivery: Delivery, attempt: int, exc: Exception) -> None:
        """After a failure: the next wait queue, or the DLQ, as ``classify`` decides."""
        verdict = classify(exc, attempt, self.policy)
        failed(current(), exc, verdict.error_type)
        if verdict.action == "retry":
            target = self.spec.wait_queue(attempt)
            _event("retry", {
                "kanin.attempt": attempt, "kanin.next_attempt": attempt + 1,
                "kanin.retry_queue": target, "kanin.delay_ms": self.ttls[attempt - 1],
                "error.type": verdict.error_type, "kanin.reason": verdict.reason[:200],
            })  # fmt: skip
            self.log.warning(
                "attempt %d of %s failed (%s: %s); retrying via %s",
                attempt, _id(delivery), verdict.error_type, verdict.reason, target,
            )  # fmt: skip
            properties = retry_message(delivery, attempt, verdict, self.ttls[attempt - 1])
            if await self.move(delivery, target, properties):
                self.stats.retried += 1
            return
        _event("dead_letter", {
            "kanin.attempt": attempt, "kanin.dlq": self.spec.dlq if self.spec.dead_letter else "",
            "error.type": verdict.error_type, "kanin.reason": verdict.reason[:200],
        })  # fmt: skip
        if not self.spec.dead_letter:
            self.log.error(
                "message %s rejected without a DLQ (dead_letter: false): %s: %s",
                _id(delivery), verdict.error_type, verdict.reason,
            )  # fmt: skip
            await delivery.channel.nack(delivery.delivery_tag, requeue=False)
            self.stats.dead_lettered += 1
            return
        self.log.error(
            "message %s dead-lettered to %s (%s: %s)",
            _id(delivery), self.spec.dlq, verdict.error_type, verdict.reason,
        )  # fmt: skip
        if await self.move(
            delivery, self.spec.dlq, dead_letter_message(delivery, verdict, self.name)
        ):
            self.stats.dead_lettered += 1

    def store_down(self, reason: str) -> None:
        """A WARNING when the idempotency store fails, at most once per ``STORE_WARNING``
        seconds: its messages wait, none is handled without its key being checked."""
        now = time.monotonic()
        if now - self._store_warned >= STORE_WARNING:
            self._store_warned = now
            self.log.warning("%s: messages wait until it answers", reason)

    async def postpone(self, delivery: Delivery, attempt: int, reason: str) -> None:
        """Try again shortly without using up an attempt (key busy elsewhere, store down)."""
        self.stats.postponed += 1
        _event("postponed", {"kanin.attempt": attempt, "kanin.reason": reason[:200]})
        self.log.debug("message %s postponed: %s", _id(delivery), reason)
        if self.ttls:  # the first wait queue, with a shorter per-message expiration
            verdict = Verdict("retry", "Postponed", reason, POSTPONE_MS / 1000)
            properties = retry_message(
                delivery, attempt, verdict, self.ttls[0], next_attempt=attempt
            )
            await self.move(delivery, self.spec.wait_queue(1), properties)
            return
        await asyncio.sleep(POSTPONE_MS / 1000)  # no wait queue: hold it, then requeue
        await delivery.channel.nack(delivery.delivery_tag, requeue=True)

    async def move(self, delivery: Delivery, target: str, properties: Properties) -> bool:
        """Publish the message's copy to ``target`` (confirmed), then ack the original;
        if the copy cannot be published, return the original to its queue."""
        try:
            await self.publisher.publish_raw("", target, delivery.body, properties)
        except KaninError as error:
            self.log.error("could not move the message to %s (%s); returning it", target, error)
            await delivery.channel.nack(delivery.delivery_tag, requeue=True)
            self.stats.returned += 1
            return False
        delivery.channel.ack(delivery.delivery_tag)
        return True


def _event(name: str, attributes: dict[str, Any]) -> None:
    """A span event on the message's process span (retry, DLQ move, duplicate...)."""
    span = current()
    if span is not None:
        span.add_event(name, attributes)


def _id(delivery: Delivery) -> str:
    return text(delivery.properties.message_id) or f"#{delivery.delivery_tag}"

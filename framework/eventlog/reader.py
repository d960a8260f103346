"""One projection at work on its stream: read in offset order, handle, checkpoint.

delivery -> inbox (in offset order) -> unit of up to ``batch`` events: for each event
decode (upcasters included), handle with in-process retries, each in a step of the
unit (a savepoint with PostgreSQL) -> save the unit's last offset -> ack (on a stream an
ack only returns credit). After a lost channel or checkpoint store the projection reads
again from its last saved offset; events it already handled are passed over by offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from framework.errors import KaninError, Reject
from framework.eventlog.checkpoints import CheckpointStore, CheckpointUnavailable, Unit
from framework.eventlog.projection import DEFAULT_PREFETCH, Projection, ProjectionContext
from framework.events import DecodeError, Event
from framework.headers import integer, text
from framework.publisher import Publisher
from framework.recovery import Verdict, dead_letter_message
from framework.retry import RetryPolicy
from framework.tracing import Tracing, current, failed
from framework.transport.base import ConsumerChannel, Delivery, StreamOffset, Transport

log = logging.getLogger("kanin.projection")
Spans = Callable[[Delivery], AbstractContextManager[Any]]


class _Redo(Exception):
    """An event failed in a unit run without savepoints: run the unit again with them."""


@dataclass
class ProjectionStats:
    received: int = 0
    handled: int = 0
    passed: int = 0  # of a type this projection has no handler for, or handled before
    parked: int = 0
    acked: int = 0

    def __str__(self) -> str:
        return ", ".join(f"{f.name} {getattr(self, f.name)}" for f in fields(self))


@dataclass(frozen=True)
class Stop:
    """Where reading ends: at an offset, or at the first event published after a time."""

    offset: int | None = None
    time: datetime | None = None

    def reached(self, offset: int) -> bool:
        return self.offset is not None and offset >= self.offset

    def beyond(self, delivery: Delivery) -> bool:
        when = delivery.properties.timestamp
        return self.time is not None and isinstance(when, datetime) and when > self.time


class ProjectionReader:
    """Reads ``cls``'s stream into it until stopped, halted, or past ``Stop``."""

    def __init__(
        self,
        cls: type[Projection],
        store: CheckpointStore,
        *,
        publisher: Publisher,
        tracing: Tracing,
        spans: Spans | None = None,
    ) -> None:
        self.cls = cls
        self.projection = cls()
        self.name = cls.projection_name()
        self.stream = cls.queue
        self.dlq = f"{self.name}.dlq"
        self.events = cls.event_classes()
        self.policy: RetryPolicy = cls.policy()
        self.prefetch = cls.prefetch or DEFAULT_PREFETCH
        self.batch = cls.batch
        self.store = store
        self.publisher = publisher
        self.tracing = tracing
        self.spans: Spans = spans or (lambda d: tracing.process(d, self.stream, 1))
        self.saved: int | None = None  # the checkpoint
        self.position: int | None = None  # last event handled or passed over
        self.halted: str | None = None  # why the projection stopped, if it did
        self.first_offset: int | None = None  # the first event of this reader not seen before
        self._resumes_at: int | None = None  # the offset a read from the checkpoint expects
        self.channel: ConsumerChannel | None = None
        self.stats = ProjectionStats()
        self.log = logging.getLogger(f"kanin.projection.{cls.__name__}")
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Finish the unit at hand, save its checkpoint, and read no further."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def load(self) -> None:
        self.saved = self.position = await self.store.load(self.name)

    def start_offset(self, given: StreamOffset | None = None) -> StreamOffset:
        """Where reading starts: ``given``, else after the checkpoint, else ``cls.offset``."""
        if given is not None:
            return given
        return self.saved + 1 if self.saved is not None else self.cls.offset

    async def read(
        self, transport: Transport, start: StreamOffset, stop: Stop | None = None
    ) -> bool:
        """Read from ``start`` until the channel goes, ``stop`` is reached (True), or the
        projection halts on an event (``halted`` says why)."""
        self.position = self.saved
        resuming = self.saved is not None and start == self.saved + 1
        self._resumes_at = start if resuming and isinstance(start, int) else None
        channel = await transport.consumer_channel(
            self.stream, self.prefetch, self.stats, offset=start
        )
        self.channel = channel
        arrived = self._inbox = asyncio.Queue()

        async def arrive(delivery: Delivery) -> None:
            arrived.put_nowait(delivery)

        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await channel.start(arrive)
            while self.halted is None and not self._stopping.is_set():
                first = asyncio.ensure_future(arrived.get())
                await asyncio.wait(
                    [first, stopping, channel.closing, channel.cancelled],
                    return_when="FIRST_COMPLETED",
                )
                if not first.done():
                    first.cancel()
                    break
                if await self.unit(first.result(), stop):
                    return True
            return False
        finally:
            stopping.cancel()
            self.channel = None
            await channel.close()

    async def unit(self, first: Delivery, stop: Stop | None) -> bool:
        """Handle ``first`` and the events already here (up to ``batch``), then save the
        checkpoint; True once ``stop`` is reached.

        In a transaction (PostgreSQL) the events run without savepoints; if one fails,
        the transaction is rolled back and the same events run again, each in a
        savepoint, so the failure is retried and settled alone. A savepoint costs two
        round trips per event, which this keeps to the units that need them."""
        taken: list[Delivery] = []
        counts = (self.stats.received, self.stats.handled, self.stats.passed)
        try:
            try:
                done = await self._unit(first, stop, taken, careful=False)
            except _Redo:
                self.position = self.saved
                self.stats.received, self.stats.handled, self.stats.passed = counts
                done = await self._unit(None, stop, taken, careful=True)
        except CheckpointUnavailable:
            self.position = self.saved
            raise
        self.saved = self.position
        for delivery in taken:
            delivery.channel.ack(delivery.delivery_tag)
        return done

    async def _unit(
        self, first: Delivery | None, stop: Stop | None, taken: list[Delivery], careful: bool
    ) -> bool:
        """One unit: from ``first`` on, taking what waits in the inbox into ``taken``; or,
        with ``first`` None, ``taken`` again."""
        done = False
        again = iter(list(taken)) if first is None else None
        async with self.store.unit(self.name) as unit:
            careful = careful or unit.db is None
            delivery = first if again is None else next(again, None)
            while delivery is not None:
                if stop is not None and stop.beyond(delivery):
                    done = True
                    break
                if again is None:
                    taken.append(delivery)
                if not await self.apply(delivery, unit, careful):
                    break
                if stop is not None and self.position is not None:
                    done = stop.reached(self.position)
                if again is not None:
                    delivery = next(again, None)
                    continue
                if done or len(taken) >= self.batch or self._inbox.empty():
                    break
                delivery = self._inbox.get_nowait()
            if self.position != self.saved:
                unit.offset = self.position
        return done

    async def apply(self, delivery: Delivery, unit: Unit, careful: bool = True) -> bool:
        """One event; False if the projection halts on it. Not ``careful``: one attempt,
        no savepoint, and ``_Redo`` if it fails."""
        self.stats.received += 1
        offset = integer(delivery.headers.get("x-stream-offset"))
        if offset is None:
            offset = -1 if self.position is None else self.position + 1
        if self.position is not None and offset <= self.position:
            return True  # handled before: read again from the start of its chunk
        if self.first_offset is None:
            self.first_offset = offset
        if self._resumes_at is not None:
            if offset > self._resumes_at:
                self.log.warning(
                    "%s: offsets %d..%d of %s are gone (dropped by its retention) before "
                    "this projection read them", self.name, self._resumes_at, offset - 1,
                    self.stream,
                )  # fmt: skip
            self._resumes_at = None
        event_type = text(delivery.properties.message_type)
        cls = self.events.get(event_type) if event_type else None
        if cls is None:
            self.stats.passed += 1
            self.position = offset
            return True
        with self.spans(delivery) as span:
            if span is not None:
                span.set_attribute("kanin.stream.offset", offset)
            error = await self.handle(delivery, cls, offset, unit, careful)
            if error is None:
                self.stats.handled += 1
                self.position = offset
                return True
            if unit.db is not None and getattr(unit.db, "broken", False):
                raise CheckpointUnavailable(f"checkpoint store lost while handling: {error!r}")
            verdict = _verdict(error, self.policy.attempts)
            failed(current(), error, verdict.error_type)
            if self.cls.on_error == "park":
                await self.park(delivery, offset, verdict)
                self.position = offset
                return True
        self.halted = (
            f"projection {self.name} stopped at offset {offset} of {self.stream}: "
            f"{verdict.error_type}: {verdict.reason}"
        )
        self.log.error("%s (fix it and restart: it resumes at this event)", self.halted)
        return False

    async def handle(
        self, delivery: Delivery, cls: type[Event], offset: int, unit: Unit, careful: bool
    ) -> Exception | None:
        """Decode, then handle: up to the policy's attempts in process, each in a step of
        the unit, waiting the policy's delays between them. The last error, or None."""
        try:
            version = integer(delivery.headers.get("x-event-version")) or None
            event = cls.from_json(delivery.body, version)
        except DecodeError as exc:
            if not careful:
                raise _Redo from None
            return exc
        if not careful:
            ctx = ProjectionContext(
                self.stream, delivery, offset, 1, self.log, self.publisher, unit.db
            )
            try:
                await self._call(event, ctx)
            except Exception:
                raise _Redo from None
            return None
        attempt = 1
        while True:
            try:
                async with unit.step():
                    ctx = ProjectionContext(
                        self.stream, delivery, offset, attempt, self.log, self.publisher, unit.db
                    )
                    await self._call(event, ctx)
                return None
            except Exception as exc:
                if isinstance(exc, Reject) or attempt >= self.policy.attempts:
                    return exc
                delay = self.policy.delay(attempt)
                self.log.warning(
                    "offset %d, attempt %d of %d failed (%r); again in %.1fs",
                    offset, attempt, self.policy.attempts, exc, delay,
                )  # fmt: skip
            await asyncio.sleep(delay)
            attempt += 1

    async def _call(self, event: Event, ctx: ProjectionContext) -> None:
        if self.cls.timeout is None:
            await self.projection.handle(event, ctx)
            return
        async with asyncio.timeout(self.cls.timeout):
            await self.projection.handle(event, ctx)

    async def park(self, delivery: Delivery, offset: int, verdict: Verdict) -> None:
        """A copy with the error headers into ``<name>.dlq``, confirmed, before moving on."""
        properties = dead_letter_message(delivery, verdict, self.name)
        properties.headers = {**(properties.headers or {}), "x-original-queue": self.stream}
        self.log.error(
            "offset %d parked in %s (%s: %s)", offset, self.dlq, verdict.error_type, verdict.reason
        )
        try:
            await self.publisher.publish_raw("", self.dlq, delivery.body, properties)
        except KaninError as exc:  # not parked: read it again from the checkpoint
            raise CheckpointUnavailable(f"could not park offset {offset}: {exc}") from None
        self.stats.parked += 1

    def unready(self) -> list[str]:
        if self.halted is not None:
            return [self.halted]
        if self.channel is None or not self.channel.is_open:
            return [f"projection {self.name}: not reading {self.stream}"]
        return []


def _verdict(exc: Exception, attempts: int) -> Verdict:
    if isinstance(exc, DecodeError):
        return Verdict("dead_letter", exc.error_type, str(exc))
    if isinstance(exc, Reject):
        return Verdict("dead_letter", "Reject", exc.reason)
    reason = str(exc) or type(exc).__name__
    error_type = "TimeoutError" if isinstance(exc, TimeoutError) else type(exc).__name__
    plural = "s" if attempts > 1 else ""
    return Verdict("dead_letter", error_type, f"gave up after {attempts} attempt{plural}: {reason}")

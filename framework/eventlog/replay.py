"""Replay: run projections over a range of their stream, then stop.

The range starts at ``start`` (default: after the checkpoint, else the projection's
``offset``) and ends at ``to`` (an offset, or the last event published at or before a
time), never past the last event the stream held when the replay began. The checkpoint
moves as in ``kanin run``, so a projection started afterwards goes on from the end of the
replay. Traced as one ``replay <stream>`` root span with a child span per event, each
linked to the trace the event was first published in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind

from framework.eventlog.checkpoints import CheckpointStore
from framework.eventlog.projection import Projection
from framework.eventlog.reader import ProjectionReader, Stop
from framework.headers import integer, text
from framework.publisher import Publisher
from framework.tracing import Tracing
from framework.transport.base import Delivery, StreamOffset, Transport

QUIET = 0.5  # seconds without a delivery that end the reading of the stream's last chunk
IDLE = 10.0  # seconds without any event that end a replay short of its range


async def last_offset(transport: Transport, stream: str, wait: float = 3.0) -> int | None:
    """The offset of the last event ``stream`` holds now (None: it is empty), read from
    offset ``last`` (the stream's last chunk) until the deliveries pause."""
    channel = await transport.consumer_channel(stream, 1000, offset="last")
    seen: list[int] = []
    arrived = asyncio.Event()

    async def one(delivery: Delivery) -> None:
        channel.ack(delivery.delivery_tag)
        offset = integer(delivery.headers.get("x-stream-offset"))
        if offset is not None:
            seen.append(offset)
        arrived.set()

    try:
        await channel.start(one)
        timeout = wait
        while True:
            try:
                await asyncio.wait_for(arrived.wait(), timeout)
            except TimeoutError:
                break
            arrived.clear()
            timeout = QUIET
    finally:
        await channel.close()
    return max(seen) if seen else None


@dataclass
class Outcome:
    """What one projection's replay did."""

    name: str
    stream: str
    first: int | None = None  # offsets read
    last: int | None = None
    end: int | None = None  # where the range ends
    handled: int = 0
    passed: int = 0
    parked: int = 0
    seconds: float = 0.0
    halted: str | None = None
    idle: bool = False  # ended short: no event came for IDLE seconds
    checkpoint: int | None = None

    @property
    def events(self) -> int:
        return self.handled + self.passed + self.parked

    def line(self) -> str:
        if self.first is None:
            where = "nothing to replay" if not self.idle else f"no event arrived in {IDLE:g}s"
            return f"{self.name}: {where} (checkpoint {self.checkpoint})"
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        text_ = (
            f"{self.name}: replayed {self.stream} offsets {self.first}..{self.last}, "
            f"{self.events} event{'' if self.events == 1 else 's'} "
            f"({self.handled} handled, {self.passed} passed over, "
            f"{self.parked} parked) in {self.seconds:.1f}s, {rate:.0f} events/s; "
            f"checkpoint {self.checkpoint}"
        )
        if self.halted:
            text_ += f"; STOPPED: {self.halted}"
        elif self.idle:
            text_ += f"; ended early: no event arrived in {IDLE:g}s"
        return text_


Progress = Callable[[ProjectionReader, Outcome], None]


@dataclass
class Replay:
    """A replay of ``classes`` (projections of one stream) on ``transport``."""

    transport: Transport
    publisher: Publisher
    tracing: Tracing
    stores: Mapping[type[Projection], CheckpointStore]
    start: StreamOffset | None = None
    to_offset: int | None = None
    to_time: datetime | None = None
    progress: Progress | None = None
    readers: list[ProjectionReader] = field(default_factory=list)

    async def reset(self, cls: type[Projection]) -> None:
        """Clear ``cls``'s checkpoint (and its read model, by its ``on_reset``)."""
        projection = cls()
        await projection.on_startup()
        try:
            await self.stores[cls].run(projection.prepare)
            await self.stores[cls].reset(cls.projection_name(), projection.on_reset)
        finally:
            await projection.on_shutdown()

    async def run(self, cls: type[Projection], end: int | None) -> Outcome:
        spans = ReplaySpans(self.tracing, cls.queue)
        reader = ProjectionReader(
            cls, self.stores[cls], publisher=self.publisher, tracing=self.tracing,
            spans=spans.event,
        )  # fmt: skip
        self.readers.append(reader)
        await reader.projection.on_startup()
        try:
            await reader.store.run(reader.projection.prepare)
            await reader.load()
            outcome = Outcome(reader.name, reader.stream, checkpoint=reader.saved)
            limit = end if self.to_offset is None or end is None else min(end, self.to_offset)
            outcome.end = limit
            if limit is None or (reader.saved is not None and reader.saved >= limit):
                return outcome
            with spans.root(reader.name):
                await self._read(reader, Stop(limit, self.to_time), outcome)
        finally:
            await reader.projection.on_shutdown()
        return outcome

    async def _read(self, reader: ProjectionReader, stop: Stop, outcome: Outcome) -> None:
        began = time.perf_counter()
        before = reader.saved
        reading = asyncio.ensure_future(
            reader.read(self.transport, reader.start_offset(self.start), stop)
        )
        seen, quiet_since = -1, time.monotonic()
        try:
            while not reading.done():
                await asyncio.wait([reading], timeout=0.25)
                stats = reader.stats
                if stats.received != seen:
                    seen, quiet_since = stats.received, time.monotonic()
                elif time.monotonic() - quiet_since > IDLE:
                    outcome.idle = True
                    reader.stop()
                self._tally(reader, outcome, began, before)
            reading.result()
        finally:
            if not reading.done():
                reading.cancel()
                await asyncio.gather(reading, return_exceptions=True)
        self._tally(reader, outcome, began, before)
        outcome.halted = reader.halted

    def _tally(
        self, reader: ProjectionReader, outcome: Outcome, began: float, before: int | None
    ) -> None:
        stats = reader.stats
        outcome.handled, outcome.passed, outcome.parked = stats.handled, stats.passed, stats.parked
        outcome.seconds = time.perf_counter() - began
        outcome.checkpoint = reader.saved
        if reader.position is not None and reader.position != before:
            outcome.last = reader.position
            if outcome.first is None:
                outcome.first = reader.first_offset
        if self.progress is not None:
            self.progress(reader, outcome)


class ReplaySpans:
    """A ``replay <stream>`` root span, and a child per event linked to its first trace."""

    def __init__(self, tracing: Tracing, stream: str) -> None:
        self.tracer = tracing.tracer
        self.stream = stream
        self.context: otel_context.Context | None = None

    @contextmanager
    def root(self, name: str) -> Iterator[None]:
        if self.tracer is None:
            yield
            return
        attributes = {"messaging.system": "rabbitmq", "kanin.stream": self.stream,
                      "kanin.projection": name}  # fmt: skip
        with self.tracer.start_as_current_span(
            f"replay {self.stream}", kind=SpanKind.INTERNAL, attributes=attributes,
            context=otel_context.Context(),
        ) as span:  # fmt: skip
            self.context = trace.set_span_in_context(span)
            yield

    def event(self, delivery: Delivery) -> AbstractContextManager[Any]:
        if self.tracer is None or self.context is None:
            return _nothing()
        first = trace.get_current_span(propagate.extract(delivery.headers)).get_span_context()
        attributes: dict[str, Any] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.type": "process",
            "messaging.destination.name": delivery.exchange,
            "messaging.message.id": text(delivery.properties.message_id) or "",
        }
        if first.is_valid:
            attributes["kanin.replay.trace_id"] = format(first.trace_id, "032x")
        return self.tracer.start_as_current_span(
            f"replay {self.stream} {text(delivery.properties.message_type) or ''}".rstrip(),
            context=self.context, kind=SpanKind.CONSUMER, attributes=attributes,
            links=[Link(first)] if first.is_valid else [],
        )  # fmt: skip


@contextmanager
def _nothing() -> Iterator[None]:
    yield None

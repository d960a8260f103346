"""Projections on the embedded broker: order, checkpoints, passing over, stop and park,
replay ranges; and the mistakes refused when a class is defined or a worker starts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import pytest

from framework import Event, Publisher, RetryPolicy, Settings, Worker
from framework.errors import ConfigError
from framework.eventlog import Projection, ProjectionContext
from framework.eventlog.checkpoints import MemoryCheckpoints, open_checkpoints
from framework.eventlog.replay import Replay, last_offset
from framework.eventlog.service import Projections, check_streams
from framework.topology import QueueSpec, Topology, expand
from framework.tracing import Tracing
from framework.transport import open_transport


class Tick(Event, type="tick", version=1):
    n: int


class Tock(Event, type="tock", version=1):
    n: int


def memory() -> Settings:
    return Settings(_env_file=None, broker_url=f"memory://{uuid.uuid4().hex[:8]}")  # type: ignore[call-arg]


def topology(stream: str) -> Topology:
    return Topology(queues=[QueueSpec(name=stream, type="stream")])


async def publish(settings: Settings, stream: str, *events: Event) -> None:
    async with Publisher(settings) as publisher:
        await publisher.publish_many(events, exchange="", routing_key=stream)


@asynccontextmanager
async def running(settings: Settings, *classes: type[Projection]) -> AsyncIterator[Worker]:
    stream = classes[0].queue
    worker = Worker(
        [], settings, topology=topology(stream), extensions=[Projections(list(classes))]
    )
    task = asyncio.create_task(worker.run())
    while not worker.ready:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


@asynccontextmanager
async def connected(settings: Settings, stream: Topology) -> AsyncIterator[Any]:
    """A transport of the embedded broker of ``settings`` with ``stream`` declared."""
    transport = open_transport(settings, "replay")
    await transport.connect(0)
    try:
        for declaration in expand(stream).queues:
            await transport.declare(declaration)
        yield transport
    finally:
        await transport.close()


class Offsets(Projection):
    """Records the offset of every event it handles in ``seen``."""

    queue = "log"
    name = "ticks"
    seen: ClassVar[list[int]]

    async def handle(self, event: Tick, ctx: ProjectionContext) -> None:
        self.seen.append(ctx.offset)


async def until(check: Any, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within 5s: {what}")


def reader_of(worker: Worker) -> Any:
    return worker.extensions[0].readers[0]  # type: ignore[attr-defined]


async def test_events_are_handled_in_order_and_other_types_passed_over() -> None:
    seen: list[tuple[int, int]] = []

    class Ticks(Projection):
        queue = "log"
        batch = 4

        async def handle(self, event: Tick, ctx: ProjectionContext) -> None:
            seen.append((ctx.offset, event.n))

    settings = memory()
    async with running(settings, Ticks) as worker:
        await publish(settings, "log", *[Tick(n=n) if n % 3 else Tock(n=n) for n in range(10)])
        reader = reader_of(worker)
        await until(lambda: reader.saved == 9, "the checkpoint at the last event")
        assert worker.unready() == []
    assert seen == [(n, n) for n in range(10) if n % 3]
    assert (reader.stats.handled, reader.stats.passed) == (6, 4)


@pytest.mark.parametrize("on_error", ["stop", "park"])
async def test_a_failing_event_halts_at_its_offset_or_is_parked(on_error: str) -> None:
    calls: list[int] = []

    class Picky(Projection):
        queue = "log"
        name = "picky"
        retry = RetryPolicy(attempts=3, backoff="fixed", initial=0.01)

        async def handle(self, event: Tick, ctx: ProjectionContext) -> None:
            calls.append(event.n)
            if event.n == 2:
                raise RuntimeError("no twos")

    Picky.on_error = on_error  # type: ignore[assignment]
    settings = memory()
    async with running(settings, Picky) as worker:
        await publish(settings, "log", *[Tick(n=n) for n in range(5)])
        reader = reader_of(worker)
        await until(lambda: reader.halted or reader.saved == 4, "a stop or the end")
        await asyncio.sleep(0.05)
        problems = worker.unready()
        if on_error == "park":
            reading = await worker.transport.reader("picky.dlq")
            parked = await reading.get()
            await reading.close()
    assert calls[:5] == [0, 1, 2, 2, 2]  # three attempts in process
    if on_error == "stop":
        assert calls == [0, 1, 2, 2, 2] and reader.saved == 1
        assert problems == [
            "projection picky stopped at offset 2 of log: RuntimeError: gave up after 3 "
            "attempts: no twos"
        ]
    else:
        assert calls == [0, 1, 2, 2, 2, 3, 4] and reader.saved == 4 and problems == []
        assert parked is not None and parked.body == Tick(n=2).to_json()
        assert parked.headers["x-error-type"] == "RuntimeError"
        assert parked.headers["x-stream-offset"] == 2


async def test_a_replay_ends_where_told_and_the_next_goes_on_from_the_checkpoint() -> None:
    Offsets.seen = seen = []
    settings = memory()
    store = MemoryCheckpoints()
    async with connected(settings, topology("log")) as transport:
        assert await last_offset(transport, "log", wait=0.2) is None  # empty
        await publish(settings, "log", *[Tick(n=n) for n in range(10)])
        end = await last_offset(transport, "log", wait=0.2)
        async with Publisher(settings, transport) as publisher:
            tracing = Tracing(None)
            first = Replay(transport, publisher, tracing, {Offsets: store}, to_offset=3)
            done = await first.run(Offsets, end)
            rest = await Replay(transport, publisher, tracing, {Offsets: store}).run(Offsets, end)
            again = await Replay(transport, publisher, tracing, {Offsets: store}).run(Offsets, end)
    assert end == 9
    assert (done.first, done.last, done.handled, done.checkpoint) == (0, 3, 4, 3)
    assert (rest.first, rest.last, rest.handled, rest.checkpoint) == (4, 9, 6, 9)
    assert again.first is None and again.line() == "ticks: nothing to replay (checkpoint 9)"
    assert seen == list(range(10))


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"offset": "start"}, "offset must be 'first', 'last', 'next', an offset >= 0 or a"),
        ({"offset": -1}, "offset must be 'first'"),
        ({"on_error": "skip"}, "on_error must be 'stop' or 'park', got 'skip'"),
        ({"concurrency": 4}, "concurrency = 4: a projection handles its events one at a time"),
        ({"batch": 0}, "batch must be a whole number >= 1, got 0"),
        ({"idempotency": "memory://"}, "a projection is kept to once by its checkpoint"),
    ],
)
def test_a_projection_class_that_cannot_work_is_refused_when_defined(
    attributes: dict[str, Any], message: str
) -> None:
    async def handle(self: Any, event: Tick, ctx: ProjectionContext) -> None:
        pass

    with pytest.raises(ConfigError) as refused:
        type("Bad", (Projection,), {"queue": "log", "handle": handle, **attributes})
    assert message in str(refused.value)


def test_a_projection_must_read_a_stream_of_the_topology_under_a_name_of_its_own() -> None:
    class One(Projection):
        queue = "log"

        async def handle(self, event: Tick, ctx: ProjectionContext) -> None:
            pass

    class Two(One):
        name = One.consumer_name()

    with pytest.raises(ConfigError, match="which the topology file does not declare"):
        check_streams([One], Topology())
    with pytest.raises(ConfigError, match="'log', a classic queue: a projection reads a stream"):
        check_streams([One], Topology(queues=[QueueSpec(name="log")]))
    with pytest.raises(ConfigError, match="share the projection name"):
        check_streams([One, Two], topology("log"))


async def test_ctx_db_needs_the_postgresql_store_and_store_urls_are_checked() -> None:
    class Ticks(Projection):
        queue = "log"
        on_error = "stop"
        retry = RetryPolicy(attempts=1)

        async def handle(self, event: Tick, ctx: ProjectionContext) -> None:
            await ctx.db.execute("select 1")

    settings = memory()
    async with running(settings, Ticks) as worker:
        await publish(settings, "log", Tick(n=1))
        await until(lambda: reader_of(worker).halted, "a stop")
        (problem,) = worker.unready()
        assert "ConfigError: gave up after 1 attempt: ctx.db needs the PostgreSQL" in problem
    with pytest.raises(ConfigError, match=r"memory://, redis://\.\.\. or postgresql://"):
        open_checkpoints("mysql://db")


async def test_events_dropped_by_retention_before_they_were_read_are_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    Offsets.seen = seen = []
    settings = memory()
    store = MemoryCheckpoints()
    small = Topology(queues=[QueueSpec(name="log", type="stream", max_length_bytes=50)])
    async with connected(settings, small) as transport:
        await publish(settings, "log", *[Tick(n=n) for n in range(3)])
        async with Publisher(settings, transport) as publisher:
            tracing = Tracing(None)
            await Replay(transport, publisher, tracing, {Offsets: store}).run(Offsets, 2)
            await publish(settings, "log", *[Tick(n=n) for n in range(3, 20)])  # 3.. dropped
            end = await last_offset(transport, "log", wait=0.2)
            await Replay(transport, publisher, tracing, {Offsets: store}).run(Offsets, end)
    assert end == 19 and seen[:3] == [0, 1, 2] and seen[-1] == 19
    first_left = seen[3]
    assert first_left > 3
    assert f"ticks: offsets 3..{first_left - 1} of log are gone (dropped by its retention)" in (
        caplog.text
    )

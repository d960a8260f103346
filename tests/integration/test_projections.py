"""Projections on real RabbitMQ streams, with checkpoints in PostgreSQL and Redis:
killed and restarted, replayed, stopped or parked on a failing event."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from framework import Event, Publisher, RetryPolicy, Worker, upcaster
from framework.eventlog import Projection, ProjectionContext
from framework.eventlog.checkpoints import MemoryCheckpoints
from framework.eventlog.replay import Replay, last_offset
from framework.eventlog.service import Projections
from framework.topology import Topology
from framework.topology.model import QueueSpec
from framework.tracing import Tracing
from framework.transport import open_transport
from tests.conftest import AMQP_URL, BrokerAdmin, schema_url
from tests.integration.apps.tally import Tick
from tests.integration.test_idempotency import REDIS
from tests.integration.test_operations import KANIN, ROOT, kanin
from tests.integration.test_probes import fetch
from tests.integration.worker_kit import (
    amqp,
    close_connections_soon,
    settings,
    started,
    wait_for,
)
from tests.integration.worker_kit import (
    stop_process as stop,
)

pytestmark = pytest.mark.integration
EVENTS = 1000


def stream_topology(write: Callable[..., Path], stream: str) -> Path:
    return write(f"queues:\n  - name: {stream}\n    type: stream\n")


async def publish_ticks(stream: str, numbers: range) -> None:
    async with Publisher(settings()) as publisher:
        await publisher.publish_many((Tick(n=n) for n in numbers), exchange="", routing_key=stream)


def start_tally(topology: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [KANIN, "run", "tests.integration.apps.tally", "--topology", str(topology)],
        env={**os.environ, "KANIN_BROKER_URL": AMQP_URL, **env},
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def query(schema: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(schema_url(schema), autocommit=True) as conn:
        try:
            return conn.execute(sql).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def execute(schema: str, sql: str) -> None:
    with psycopg.connect(schema_url(schema), autocommit=True) as conn:
        conn.execute(sql)


def table_exists(schema: str, table: str) -> bool:
    return query(schema, f"select to_regclass('{table}')")[0][0] is not None


def checkpoint(schema: str, name: str) -> int | None:
    rows = query(schema, f"select stream_offset from kanin_checkpoints where name = '{name}'")
    return rows[0][0] if rows else None


async def test_a_projection_killed_and_restarted_applies_each_event_once(
    prefix: str, pg_schema: str, write: Callable[..., Path]
) -> None:
    stream = f"{prefix}.log"
    topology = stream_topology(write, stream)
    url = schema_url(pg_schema)
    env = {"KT_STREAM": stream, "KT_NAME": "tally", "KANIN_CHECKPOINT_URL": url}
    first = start_tally(topology, **env, KT_DELAY="0.003")
    try:
        await wait_for(lambda: table_exists(pg_schema, "tally"), 30, first, "the table")
        await publish_ticks(stream, range(EVENTS))
        kill_at = random.randrange(100, 800)
        await wait_for(
            lambda: (checkpoint(pg_schema, "tally") or 0) >= kill_at, 60, first, "progress"
        )
        first.send_signal(signal.SIGKILL)  # mid-batch, most likely
        first.communicate(timeout=30)
        at_kill = checkpoint(pg_schema, "tally")
        assert at_kill is not None and at_kill < EVENTS - 1
    finally:
        if first.poll() is None:
            first.kill()
    second = start_tally(topology, **env)
    try:
        await wait_for(lambda: checkpoint(pg_schema, "tally") == EVENTS - 1, 60, second, "end")
    finally:
        out = stop(second)
    assert f"projection tally reading {stream} from {at_kill + 1}" in out, out
    # what one uninterrupted run makes: every event applied once, in order, none skipped
    rows = query(pg_schema, "select stream_offset, n, seen from tally order by stream_offset")
    assert rows == [(n, n, 1) for n in range(EVENTS)]


async def test_with_the_redis_checkpoint_a_restart_applies_again_at_most_one_batch(
    prefix: str, write: Callable[..., Path]
) -> None:
    from redis import Redis

    stream = f"{prefix}.log"
    topology = stream_topology(write, stream)
    key = f"{prefix}:tally"
    name = f"{prefix}.tally"
    env = {
        "KT_STREAM": stream, "KT_NAME": name, "KANIN_CHECKPOINT_URL": REDIS,
        "KT_REDIS_URL": REDIS, "KT_REDIS_KEY": key,
    }  # fmt: skip
    redis = Redis.from_url(REDIS, decode_responses=True)

    def saved() -> int:
        value = redis.get(f"kanin:checkpoint:{name}")
        return -1 if value is None else int(value)

    try:
        assert kanin("topology", "apply", str(topology)).returncode == 0
        await publish_ticks(stream, range(EVENTS))
        first = start_tally(topology, **env, KT_DELAY="0.003")
        try:
            await wait_for(lambda: saved() >= random.randrange(100, 800), 60, first, "progress")
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        at_kill = saved()
        second = start_tally(topology, **env)
        try:
            await wait_for(lambda: saved() == EVENTS - 1, 60, second, "the end")
        finally:
            stop(second)
        seen = {int(k): int(v) for k, v in redis.hgetall(key).items()}
        assert sorted(seen) == list(range(EVENTS))  # none skipped
        twice = sorted(k for k, v in seen.items() if v > 1)
        assert all(v <= 2 for v in seen.values())
        # applied again: only events after the checkpoint the killed worker had saved,
        # at most one batch of them (Tally.batch = 25)
        assert all(at_kill < k <= at_kill + 25 for k in twice), (at_kill, twice)
    finally:
        redis.delete(key, f"kanin:checkpoint:{name}")
        redis.close()


def test_kanin_run_refuses_a_projection_on_a_queue_and_several_processes(
    prefix: str, write: Callable[..., Path]
) -> None:
    queue = write(f"queues:\n  - name: {prefix}.log\n", name="queue.yaml")
    env = {"KT_STREAM": f"{prefix}.log"}
    run = subprocess.run(
        [KANIN, "run", "tests.integration.apps.tally", "--topology", str(queue)],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        f"error: tests.integration.apps.tally.Tally reads '{prefix}.log', a classic queue: "
        "a projection reads a stream (type: stream); a queue is read by a Consumer"
    )
    streams = stream_topology(write, f"{prefix}.log")
    run = subprocess.run(
        [KANIN, "run", "tests.integration.apps.tally", "--topology", str(streams),
         "--processes", "2"],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "a projection reads its stream in order in one process" in run.stderr


def replay(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KANIN, "replay", *args],
        env={**os.environ, "KANIN_BROKER_URL": AMQP_URL, **env}, cwd=ROOT, capture_output=True,
        text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def dump(schema: str, table: str) -> bytes:
    with psycopg.connect(schema_url(schema)) as conn, conn.cursor() as cursor:
        out = bytearray()
        with cursor.copy(f"copy (select * from {table} order by 1) to stdout") as copy:
            for block in copy:
                out += block
        return bytes(out)


async def publish_shop_flows(stream: str, orders: int) -> int:
    from workers.events import (
        InventoryReserved,
        PaymentCaptured,
        PaymentFailed,
        ShipmentScheduled,
    )
    from workers.orders import order

    events: list[Any] = []
    for n in range(orders):
        placed = order(f"order-{n:03}")
        email, total = placed.customer_email, placed.total_cents
        events += [placed, InventoryReserved(order_id=placed.order_id, customer_email=email,
                                             total_cents=total)]  # fmt: skip
        if n % 5 == 4:
            events.append(PaymentFailed(order_id=placed.order_id, customer_email=email,
                                        reason="declined"))  # fmt: skip
            continue
        events += [
            PaymentCaptured(order_id=placed.order_id, customer_email=email, amount_cents=total,
                            payment_id=f"pay-{n}"),
            ShipmentScheduled(order_id=placed.order_id, customer_email=email,
                              tracking_id=f"track-{n}"),
        ]  # fmt: skip
    async with Publisher(settings()) as publisher:
        await publisher.publish_many(events, exchange="", routing_key=stream)
    return len(events)


async def test_replay_with_reset_rebuilds_the_order_history_byte_for_byte(
    prefix: str, pg_schema: str, write: Callable[..., Path]
) -> None:
    stream = f"{prefix}.log"
    topology = stream_topology(write, stream)
    assert kanin("topology", "apply", str(topology)).returncode == 0
    total = await publish_shop_flows(stream, 20)
    env = {
        "KT_STREAM": stream, "KT_NAME": f"{prefix}.history",
        "KANIN_CHECKPOINT_URL": schema_url(pg_schema), "KANIN_TOPOLOGY": str(topology),
    }  # fmt: skip
    target = "tests.integration.apps.history"

    planned = replay(stream, target, "--dry-run", **env)
    assert planned.returncode == 0, planned.stderr
    assert f"would read {stream} from 'first' to {total - 1}" in planned.stdout
    assert checkpoint(pg_schema, f"{prefix}.history") is None  # nothing changed

    built = replay(stream, target, **env)
    assert built.returncode == 0, built.stderr
    assert f"replayed {stream} offsets 0..{total - 1}, {total} events ({total} handled" in (
        built.stdout
    )
    before = dump(pg_schema, "order_history")
    rows = query(pg_schema, "select order_id, status from order_history order by 1")
    assert rows[:5] == [("order-000", "shipped"), ("order-001", "shipped"),
                        ("order-002", "shipped"), ("order-003", "shipped"),
                        ("order-004", "payment failed")]  # fmt: skip
    timeline = query(pg_schema, "select timeline from order_history where order_id='order-000'")
    assert [step["event"] for step in timeline[0][0]] == [
        "order.placed", "inventory.reserved", "payment.captured", "shipment.scheduled"
    ]  # fmt: skip

    again = replay(stream, target, "--from", "first", **env)
    assert again.returncode == 2
    assert "--from first would pass over those events; add --reset" in again.stderr

    up_to_date = replay(stream, target, **env)  # from the checkpoint: nothing left
    assert up_to_date.returncode == 0 and "nothing to replay" in up_to_date.stdout

    execute(pg_schema, "drop table order_history")
    rebuilt = replay(stream, target, "--reset", **env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert dump(pg_schema, "order_history") == before
    assert checkpoint(pg_schema, f"{prefix}.history") == total - 1


async def test_replay_from_a_time_to_an_offset(
    prefix: str, pg_schema: str, write: Callable[..., Path]
) -> None:
    stream = f"{prefix}.log"
    topology = stream_topology(write, stream)
    assert kanin("topology", "apply", str(topology)).returncode == 0
    await publish_ticks(stream, range(10))
    await asyncio.sleep(1.5)
    since = datetime.now(UTC)
    await asyncio.sleep(0.5)
    await publish_ticks(stream, range(10, 20))
    env = {"KT_STREAM": stream, "KT_NAME": "tally", "KANIN_CHECKPOINT_URL": schema_url(pg_schema),
           "KANIN_TOPOLOGY": str(topology)}  # fmt: skip
    done = replay(stream, "tests.integration.apps.tally", "--from", since.isoformat(),
                  "--to", "14", **env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"replayed {stream} offsets 10..14, 5 events" in done.stdout
    assert query(pg_schema, "select stream_offset, seen from tally order by 1") == [
        (n, 1) for n in range(10, 15)
    ]
    assert checkpoint(pg_schema, "tally") == 14
    rest = replay(stream, "tests.integration.apps.tally", **env)  # on from the checkpoint
    assert "offsets 15..19, 5 events" in rest.stdout, rest.stderr


def projection_worker(stream: str, *classes: type[Any], **overrides: Any) -> Worker:
    topology = Topology(queues=[QueueSpec(name=stream, type="stream")])
    return Worker(
        [], settings(**overrides), topology=topology, extensions=[Projections(list(classes))]
    )


@pytest.mark.parametrize("on_error", ["stop", "park"])
async def test_a_failing_event_stops_the_projection_or_is_parked(
    prefix: str, admin: BrokerAdmin, on_error: str
) -> None:
    stream = f"{prefix}.log"
    applied: list[int] = []

    class Fussy(Projection):
        queue = stream
        name = f"{prefix}.fussy"
        retry = RetryPolicy(attempts=2, backoff="fixed", initial=0.05)

        async def handle(self, event: Tick, ctx: ProjectionContext) -> None:
            if event.n == 5:
                raise ValueError(f"cannot count {event.n}")
            applied.append(ctx.offset)

    Fussy.on_error = on_error  # type: ignore[assignment]
    worker = projection_worker(stream, Fussy, http_port=0)
    async with started(worker):
        assert worker.probes is not None
        await publish_ticks(stream, range(10))
        reader = worker.extensions[0].readers[0]  # type: ignore[attr-defined]
        await wait_for(lambda: reader.halted or reader.saved == 9, 30, None, "the end or a stop")
        status, body = await fetch(worker.probes.port, "/readyz")
        scraped, metrics = await fetch(worker.probes.port, "/metrics")
        assert scraped == 200  # a worker with no consumer class, only a projection
        key = f'projection="{prefix}.fussy",stream="{stream}"'
        assert f"kanin_projection_stopped{{{key}}} {1.0 if on_error == 'stop' else 0.0}" in metrics
        assert f"kanin_projection_checkpoint{{{key}}} {4.0 if on_error == 'stop' else 9.0}" in (
            metrics
        )
        parked = 1.0 if on_error == "park" else 0.0
        assert f'kanin_projection_events_total{{outcome="parked",{key}}} {parked}' in metrics
        if on_error == "stop":
            await asyncio.sleep(0.5)  # nothing more comes: it stays at the failing event
            assert applied == [0, 1, 2, 3, 4] and reader.saved == 4
            assert (status, body) == (
                503, f"projection {prefix}.fussy stopped at offset 5 of {stream}: ValueError: "
                "gave up after 2 attempts: cannot count 5\n",
            )  # fmt: skip
        else:
            assert applied == [0, 1, 2, 3, 4, 6, 7, 8, 9]
            assert (status, body) == (200, "ready\n")
    if on_error == "park":
        async with amqp() as channel:
            dlq = await channel.declare_queue(f"{prefix}.fussy.dlq", passive=True)
            parked = await dlq.get(no_ack=True)
            assert parked is not None and parked.body == Tick(n=5).to_json()
            assert parked.headers["x-error-type"] == "ValueError"
            assert parked.headers["x-stream-offset"] == 5
            assert parked.headers["x-original-queue"] == stream
            assert parked.headers["x-failed-consumer"] == f"{prefix}.fussy"
            assert await dlq.get(fail=False) is None


class Measured(Event, type="measured", version=2):
    """Version 1 had ``value`` in centimetres; version 2 has ``millimetres``."""

    millimetres: int

    @upcaster(from_version=1)
    @staticmethod
    def _v1(data: dict[str, Any]) -> dict[str, Any]:
        return {"millimetres": data["value"] * 10}


async def test_a_log_holding_v1_and_v2_events_replays_through_the_upcaster(prefix: str) -> None:
    stream = f"{prefix}.log"
    seen: list[int] = []

    class Lengths(Projection):
        queue = stream
        name = f"{prefix}.lengths"

        async def handle(self, event: Measured, ctx: ProjectionContext) -> None:
            seen.append(event.millimetres)

    async with amqp() as channel:
        await channel.declare_queue(stream, durable=True, arguments={"x-queue-type": "stream"})
        for body, version in ((b'{"value": 3}', 1), (b'{"millimetres": 45}', 2),
                              (b'{"value": 7}', 1)):  # fmt: skip
            message = aio_pika.Message(body, type="measured", headers={"x-event-version": version})
            await channel.default_exchange.publish(message, routing_key=stream)
    async with started(projection_worker(stream, Lengths)) as worker:
        reader = worker.extensions[0].readers[0]  # type: ignore[attr-defined]
        await wait_for(lambda: reader.saved == 2, 30, None, "three events")
    assert seen == [30, 45, 70]


async def test_a_replay_is_one_trace_whose_event_spans_link_to_their_first_traces(
    prefix: str,
) -> None:
    stream = f"{prefix}.log"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    counted: list[int] = []

    class Counter(Projection):
        queue = stream
        name = f"{prefix}.counter"

        async def handle(self, event: Tick, ctx: ProjectionContext) -> None:
            counted.append(event.n)

    async with amqp() as channel:
        await channel.declare_queue(stream, durable=True, arguments={"x-queue-type": "stream"})
    async with Publisher(settings(), tracer_provider=provider) as publisher:
        for n in range(3):
            await publisher.publish(Tick(n=n), exchange="", routing_key=stream)
    sent = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans()}
    exporter.clear()
    transport = open_transport(settings(), "kt-replay")
    await transport.connect(5)
    tracing = Tracing(provider)
    try:
        async with Publisher(settings(), transport, tracing=tracing) as publisher:
            job = Replay(transport, publisher, tracing, {Counter: MemoryCheckpoints()})
            outcome = await job.run(Counter, await last_offset(transport, stream))
    finally:
        await transport.close()
    assert counted == [0, 1, 2] and outcome.last == 2 and outcome.handled == 3
    spans = exporter.get_finished_spans()
    (root,) = [s for s in spans if s.parent is None]
    assert root.name == f"replay {stream}"
    children = [s for s in spans if s.parent is not None]
    assert [s.name for s in children] == [f"replay {stream} tick"] * 3
    for child in children:
        assert child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id
        first = sent[child.attributes["messaging.message.id"]]
        assert [link.context.span_id for link in child.links] == [first.context.span_id]
        assert child.attributes["kanin.replay.trace_id"] == format(first.context.trace_id, "032x")
        assert child.context.trace_id != first.context.trace_id


async def test_in_postgresql_a_failing_event_is_retried_alone_and_nothing_counts_twice(
    prefix: str, pg_schema: str
) -> None:
    stream = f"{prefix}.log"
    tries: dict[int, int] = {}

    class Careful(Projection):
        queue = stream
        name = f"{prefix}.careful"
        checkpoint = schema_url(pg_schema)
        batch = 10
        retry = RetryPolicy(attempts=3, backoff="fixed", initial=0.01)

        async def prepare(self, db: Any) -> None:
            await db.execute("create table tally (stream_offset bigint primary key, seen int)")

        async def handle(self, event: Tick, ctx: ProjectionContext) -> None:
            await ctx.db.execute(
                "insert into tally values (%s, 1) on conflict (stream_offset) "
                "do update set seen = tally.seen + 1",
                [ctx.offset],
            )
            tries[event.n] = tries.get(event.n, 0) + 1
            if event.n == 5 and tries[5] < 3:  # fails twice, then succeeds
                raise RuntimeError("not yet")
            if event.n == 12:
                raise RuntimeError("never")  # the projection stops here

    async with amqp() as channel:
        await channel.declare_queue(stream, durable=True, arguments={"x-queue-type": "stream"})
    await publish_ticks(stream, range(15))  # one unit holds them all: batch 10, then 5
    async with started(projection_worker(stream, Careful)) as worker:
        reader = worker.extensions[0].readers[0]  # type: ignore[attr-defined]
        await wait_for(lambda: reader.halted is not None, 30, None, "the stop at 12")
    assert reader.saved == 11 and checkpoint(pg_schema, f"{prefix}.careful") == 11
    # every write of a failed attempt, and of a unit run again, was rolled back
    assert query(pg_schema, "select stream_offset, seen from tally order by 1") == [
        (n, 1) for n in range(12)
    ]
    assert tries[5] == 1 + 2  # once in the unit without savepoints, then twice in savepoints
    assert tries[12] == 1 + 3


async def test_after_a_lost_connection_a_projection_goes_on_from_its_checkpoint(
    prefix: str, pg_schema: str, admin: BrokerAdmin
) -> None:
    stream = f"{prefix}.log"

    class Steady(Projection):
        queue = stream
        name = f"{prefix}.steady"
        checkpoint = schema_url(pg_schema)
        batch = 20
        prefetch = 50  # most events arrive after the reconnect

        async def prepare(self, db: Any) -> None:
            await db.execute("create table tally (stream_offset bigint primary key, seen int)")

        async def handle(self, event: Tick, ctx: ProjectionContext) -> None:
            await asyncio.sleep(0.002)
            await ctx.db.execute(
                "insert into tally values (%s, 1) on conflict (stream_offset) "
                "do update set seen = tally.seen + 1",
                [ctx.offset],
            )

    async with amqp() as channel:
        await channel.declare_queue(stream, durable=True, arguments={"x-queue-type": "stream"})
    await publish_ticks(stream, range(500))
    service = f"{prefix}-svc"
    async with started(projection_worker(stream, Steady, service_name=service)) as worker:
        reader = worker.extensions[0].readers[0]  # type: ignore[attr-defined]
        await wait_for(lambda: (reader.saved or 0) >= 60, 30, None, "some progress")
        assert await close_connections_soon(admin, service) == 1
        await wait_for(lambda: reader.saved == 499, 60, None, "the end after the reconnect")
        await wait_for(lambda: worker.unready() == [], 30, None, "reading again")
        assert worker.reconnects >= 1 and reader.first_offset == 0
    assert query(pg_schema, "select stream_offset, seen from tally order by 1") == [
        (n, 1) for n in range(500)
    ]

"""The outbox on real PostgreSQL and RabbitMQ: rolled back or committed, relayed through a
SIGKILL, by two relays at once in per-key order, and across a broker outage."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import psycopg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from framework import Consumer, Context, Event, Publisher, RetryPolicy, Worker
from framework.outbox import tables
from framework.outbox.inbox import Inbox
from framework.outbox.outbox import Outbox
from framework.outbox.relay import Relay
from framework.outbox.service import OutboxRelay
from tests.conftest import AMQP_URL, schema_url
from tests.integration.apps.slow import Job
from tests.integration.faults import FaultProxy
from tests.integration.test_operations import KANIN, ROOT
from tests.integration.worker_kit import (
    EMPTY_TOPOLOGY,
    amqp,
    settings,
    started,
    wait_for,
)
from tests.integration.worker_kit import (
    stop_process as stop,
)

pytestmark = pytest.mark.integration


class Step(Event, type="step", version=1):
    key: str
    n: int


async def write(
    url: str, queue: str, count: int, keys: int = 0, per_tx: int = 50, first: int = 0
) -> list[str]:
    """Events ``first`` .. ``first + count - 1`` into the outbox, ``per_tx`` per
    transaction, keyed ``k<n mod keys>`` (none without ``keys``); their message ids."""
    outbox = Outbox(settings())
    ids: list[str] = []
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for start in range(first, first + count, per_tx):
            async with outbox.transaction(conn) as tx:
                for n in range(start, min(first + count, start + per_tx)):
                    key = f"k{n % keys}" if keys else None
                    ids.append(await tx.publish(Step(key=key or "-", n=n), exchange="",
                                                routing_key=queue, key=key))  # fmt: skip
    return ids


async def drain(
    queue: str, expected: int, within: float = 60
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Every message of ``queue`` once at least ``expected`` arrived (and nothing more
    for a moment), in the order they came."""
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    async with amqp() as channel:
        q = await channel.declare_queue(queue, passive=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        quiet = 0
        while loop.time() < deadline and (len(got) < expected or quiet < 10):
            message = await q.get(no_ack=True, fail=False)
            if message is None:
                quiet += 1
                await asyncio.sleep(0.05)
                continue
            quiet = 0
            got.append(message)
    return got


def execute(schema: str, sql: str) -> None:
    with psycopg.connect(schema_url(schema), autocommit=True) as conn:
        conn.execute(sql)


def queue_exists(name: str) -> bool:
    async def look() -> bool:
        async with amqp() as channel:
            try:
                await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return False
            return True

    return asyncio.run(look())


def pending(schema: str) -> int:
    with psycopg.connect(schema_url(schema)) as conn:
        return conn.execute("select count(*) from kanin_outbox where sent_at is null").fetchone()[0]


def sent(schema: str) -> int:
    with psycopg.connect(schema_url(schema)) as conn:
        row = conn.execute("select count(*) from kanin_outbox where sent_at is not null")
        return row.fetchone()[0]


@asynccontextmanager
async def queue_and_tables(prefix: str, schema: str) -> AsyncIterator[tuple[str, str]]:
    url = schema_url(schema)
    await tables.init(url)
    async with amqp() as channel:
        await channel.declare_queue(f"{prefix}.q")
    yield url, f"{prefix}.q"


def start_relay(url: str, broker: str = AMQP_URL) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [KANIN, "outbox", "relay", "--url", url],
        env={**os.environ, "KANIN_BROKER_URL": broker}, cwd=ROOT, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


async def test_a_rolled_back_transaction_sends_nothing_and_a_commit_sends_once(
    prefix: str, pg_schema: str
) -> None:
    async with queue_and_tables(prefix, pg_schema) as (url, queue):
        outbox = Outbox(settings())
        async with await psycopg.AsyncConnection.connect(url) as conn:
            await conn.execute("create table orders (id text primary key)")
            with pytest.raises(RuntimeError):
                async with outbox.transaction(conn) as tx:
                    await conn.execute("insert into orders values ('o-1')")
                    await tx.publish(Step(key="o-1", n=1), exchange="", routing_key=queue)
                    raise RuntimeError("the order is not valid after all")
            async with outbox.transaction(conn) as tx:
                await conn.execute("insert into orders values ('o-2')")
                message_id = await tx.publish(Step(key="o-2", n=2), exchange="",
                                              routing_key=queue)  # fmt: skip
            orders = await (await conn.execute("select id from orders")).fetchall()
        assert orders == [("o-2",)]
        async with Publisher(settings()) as publisher:
            relay = Relay(url, publisher)
            task = asyncio.create_task(relay.run())
            got = await drain(queue, 1)
            relay.stop()
            await task
        assert [(m.message_id, json.loads(m.body)) for m in got] == [
            (message_id, {"key": "o-2", "n": 2})
        ]
        assert pending(pg_schema) == 0


async def test_a_relay_killed_midway_loses_nothing_and_resends_with_the_same_ids(
    prefix: str, pg_schema: str
) -> None:
    async with queue_and_tables(prefix, pg_schema) as (url, queue):
        ids = await write(url, queue, 5000, per_tx=500)
        first = start_relay(url)
        try:
            kill_at = random.randrange(300, 4000)
            await wait_for(lambda: sent(pg_schema) >= kill_at or first.poll() is not None, 60,
                        what="some rows sent")  # fmt: skip
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        assert pending(pg_schema) > 0, "the relay finished before it was killed"
        second = start_relay(url)
        try:
            await wait_for(lambda: pending(pg_schema) == 0, 60, what="every row sent")
        finally:
            out = stop(second)
        assert second.returncode == 0, out
        got = await drain(queue, 5000)
    delivered = [m.message_id for m in got]
    assert set(delivered) == set(ids)  # none lost
    bodies: dict[str, bytes] = {}
    for message in got:  # a copy sent twice is the same message, same id
        assert bodies.setdefault(str(message.message_id), message.body) == message.body
    assert len(delivered) - len(set(delivered)) <= 500  # at most the killed relay's batch


async def test_two_relays_share_the_rows_and_keep_each_keys_order(
    prefix: str, pg_schema: str
) -> None:
    async with queue_and_tables(prefix, pg_schema) as (url, queue):
        await write(url, queue, 3000, keys=20, per_tx=100)
        relays = [start_relay(url), start_relay(url)]
        try:
            await wait_for(lambda: pending(pg_schema) == 0, 60, what="every row sent")
        finally:
            outs = [stop(r) for r in relays]
        assert [r.returncode for r in relays] == [0, 0], outs
        got = await drain(queue, 3000)
    by_key: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for message in got:
        if message.message_id in seen:
            continue
        seen.add(str(message.message_id))
        step = json.loads(message.body)
        by_key[step["key"]].append(step["n"])
    assert len(seen) == 3000 and len(got) == 3000  # each row sent by one relay only
    for key, numbers in by_key.items():
        assert numbers == sorted(numbers), key
    with psycopg.connect(schema_url(pg_schema)) as conn:
        both = conn.execute("select count(*) from kanin_outbox where attempts > 0").fetchone()
    assert both == (0,)


async def test_rows_written_while_the_broker_is_down_go_out_in_order_when_it_is_back(
    prefix: str, pg_schema: str
) -> None:
    async with queue_and_tables(prefix, pg_schema) as (url, queue), FaultProxy() as proxy:
        broker = settings(broker_url=proxy.url(), publish_timeout=1.0)
        async with Publisher(broker) as publisher:
            relay = Relay(url, publisher, stuck_after=0.5)
            task = asyncio.create_task(relay.run())
            try:
                await write(url, queue, 10, keys=2, per_tx=5)
                await wait_for(lambda: pending(pg_schema) == 0, 30, what="the first rows sent")
                proxy.refuse()
                proxy.cut()
                await write(url, queue, 200, keys=2, per_tx=20, first=10)
                await asyncio.sleep(2.0)
                assert pending(pg_schema) == 200  # waiting, not lost
                problems = relay.unready()
                assert any(p.startswith("outbox relay failing for ") for p in problems), problems
                with psycopg.connect(schema_url(pg_schema)) as conn:
                    tries = conn.execute("select max(attempts) from kanin_outbox").fetchone()
                assert tries == (0,)  # an outage is no row's failure: each keeps its place
                await proxy.accept()
                await wait_for(lambda: pending(pg_schema) == 0, 60, what="every row sent after")
            finally:
                relay.stop()
                await task
        got = await drain(queue, 210)
    steps = [json.loads(m.body) for m in got]
    assert len({m.message_id for m in got}) == 210
    for key in ("k0", "k1"):
        numbers = [s["n"] for s in steps if s["key"] == key]
        assert numbers == sorted(numbers) and len(set(numbers)) == 105


async def test_an_inbox_worker_killed_anywhere_leaves_each_effect_and_event_once(
    prefix: str, pg_schema: str
) -> None:
    async with queue_and_tables(prefix, pg_schema) as (url, out):
        execute(pg_schema, "create table effects (n integer not null)")
        work = f"{prefix}.work"
        env = {
            **os.environ, "KANIN_BROKER_URL": AMQP_URL, "KANIN_OUTBOX_URL": url,
            "KT_QUEUE": work, "KT_OUT": out, "KANIN_TOPOLOGY": EMPTY_TOPOLOGY,
        }  # fmt: skip

        def start(delay: str) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [KANIN, "run", "tests.integration.apps.inbox"], env={**env, "KT_DELAY": delay},
                cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip

        def effects() -> int:
            with psycopg.connect(schema_url(pg_schema)) as conn:
                return conn.execute("select count(*) from effects").fetchone()[0]

        first = start("0.01")
        try:
            await wait_for(
                lambda: queue_exists(work) or first.poll() is not None, 60, what="the queue"
            )
            async with Publisher(settings()) as publisher:
                await publisher.publish_many(
                    [Job(n=n) for n in range(500)], exchange="", routing_key=work
                )
            await wait_for(lambda: effects() >= random.randrange(50, 400), 60, what="some effects")
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        assert effects() < 500, "the worker finished before it was killed"
        second = start("0")
        try:
            await wait_for(
                lambda: effects() == 500 and pending(pg_schema) == 0, 90, what="all handled"
            )
            await asyncio.sleep(1.0)  # anything handled twice would show by now
        finally:
            out_text = stop(second)
        assert second.returncode == 0, out_text
        got = await drain(out, 500)
    with psycopg.connect(schema_url(pg_schema)) as conn:
        counts = conn.execute("select n, count(*) from effects group by n order by n").fetchall()
        rows = conn.execute("select count(*), count(distinct message_id) from kanin_outbox")
        outbox_rows = rows.fetchone()
    assert counts == [(n, 1) for n in range(500)]  # each effect once
    assert outbox_rows == (500, 500)  # each follow-up written once
    by_n: dict[int, set[str]] = defaultdict(set)
    for message in got:
        by_n[json.loads(message.body)["n"]].add(str(message.message_id))
    assert sorted(by_n) == list(range(500))
    assert all(len(ids) == 1 for ids in by_n.values())  # a copy on the wire: the same event
    assert len(got) - 500 <= 500  # copies only from a relay killed between send and commit


async def test_a_database_error_in_the_handler_rolls_back_and_retries(
    prefix: str, pg_schema: str
) -> None:
    from tests.integration.apps.inbox import Done

    tries: list[int] = []
    async with queue_and_tables(prefix, pg_schema) as (url, out):
        execute(pg_schema, "create table effects (n integer not null)")

        class Flaky(Consumer):
            queue = f"{prefix}.work"
            idempotency = "postgres"
            retry = RetryPolicy(attempts=3, backoff="fixed", initial=0.2)

            async def handle(self, event: Job, ctx: Context) -> None:
                tries.append(ctx.attempt)
                async with ctx.transaction() as db:
                    await db.execute("insert into effects (n) values (%s)", [event.n])
                    await ctx.publish(Done(n=event.n), exchange="", routing_key=out)
                    if ctx.attempt == 1:
                        await db.execute("select 1 / 0")  # a database error

        config = settings(outbox_url=url)
        worker = Worker([Flaky], config, extensions=[Inbox(config), OutboxRelay(url)])
        async with started(worker):
            async with Publisher(config) as publisher:
                await publisher.publish(Job(n=7), exchange="", routing_key=f"{prefix}.work")
            got = await drain(out, 1)
            stats = worker.runners[0].stats
    assert tries == [1, 2] and (stats.retried, stats.handled) == (1, 1)
    assert [json.loads(m.body) for m in got] == [{"n": 7}]
    with psycopg.connect(schema_url(pg_schema)) as conn:
        assert conn.execute("select n from effects").fetchall() == [(7,)]
        assert conn.execute("select count(*) from kanin_outbox").fetchone() == (1,)
        assert conn.execute("select count(*) from kanin_inbox").fetchone() == (1,)


async def test_the_send_span_starts_in_the_callers_trace_and_the_consumer_is_its_child(
    prefix: str, pg_schema: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handled = asyncio.Event()

    class Listen(Consumer):
        queue = f"{prefix}.traced"  # declared by the worker, before its relay starts

        async def handle(self, event: Step, ctx: Context) -> None:
            handled.set()

    queue = Listen.queue
    async with queue_and_tables(prefix, pg_schema) as (url, _):
        config = settings()
        outbox = Outbox(config, tracer_provider=provider)
        tracer = provider.get_tracer("shop")
        async with await psycopg.AsyncConnection.connect(url) as conn:
            with tracer.start_as_current_span("place order") as business:
                async with outbox.transaction(conn) as tx:
                    await tx.publish(Step(key="o-1", n=1), exchange="", routing_key=queue)
        worker = Worker([Listen], config, tracer_provider=provider, extensions=[OutboxRelay(url)])
        async with started(worker):
            await asyncio.wait_for(handled.wait(), 30)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    send = spans[f"send amq.default:{queue}"]
    process = spans[f"process amq.default:{queue}:{queue}"]
    trace_id = business.get_span_context().trace_id
    assert send.context.trace_id == trace_id == process.context.trace_id
    assert send.parent.span_id == business.get_span_context().span_id
    assert process.parent.span_id == send.context.span_id
    assert [s.name for s in exporter.get_finished_spans()].count(f"send amq.default:{queue}") == 1


def outbox_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KANIN_")}
    return subprocess.run(
        [KANIN, "outbox", *args], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


async def test_outbox_init_and_status_from_the_command_line(pg_schema: str) -> None:
    url = schema_url(pg_schema)
    missing = outbox_cli("init")
    assert (missing.returncode, missing.stderr) == (
        2, "error: name the outbox database: --url postgresql://... or KANIN_OUTBOX_URL\n"
    )  # fmt: skip
    before = outbox_cli("status", "--url", url)
    assert (before.returncode, before.stderr) == (
        1, "error: no kanin_outbox table in that database: run 'kanin outbox init'\n"
    )  # fmt: skip
    for _ in range(2):  # safe to run again
        made = outbox_cli("init", "--url", url)
        assert made.returncode == 0, made.stderr
        assert made.stdout.startswith("outbox tables ready in 127.0.0.1:5432/test")
    await write(url, "nowhere", 3)
    shown = outbox_cli("status", "--url", url, "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    assert (report["pending"], report["failing"], report["sent_kept"]) == (3, 0, 0)
    assert report["oldest_pending_seconds"] >= 0
    unreachable = outbox_cli("status", "--url", "postgresql://postgres@127.0.0.1:1/test")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: outbox database: ")
    assert len(unreachable.stderr.splitlines()) == 1


async def test_an_unroutable_row_waits_with_its_error_and_the_others_go_out(
    prefix: str, pg_schema: str
) -> None:
    async with queue_and_tables(prefix, pg_schema) as (url, queue):
        await write(url, f"{prefix}.nowhere", 1)
        await write(url, queue, 5, first=1)
        async with Publisher(settings()) as publisher:
            relay = Relay(url, publisher, stuck_after=0.5, poll=0.2)
            task = asyncio.create_task(relay.run())
            try:
                got = await drain(queue, 5)
                await wait_for(lambda: bool(relay.unready()), 10, what="the relay says it is stuck")
                problems = relay.unready()
            finally:
                relay.stop()
                await task
        status = outbox_cli("status", "--url", url)
    assert sorted(json.loads(m.body)["n"] for m in got) == [1, 2, 3, 4, 5]
    assert len(problems) == 1 and problems[0].startswith(
        "outbox relay stuck: 1 row pending, the oldest for "
    )
    assert "NO_ROUTE" in problems[0]
    assert status.returncode == 1
    assert status.stdout.startswith("pending 1 (oldest ")
    assert "failing 1, sent and kept 5" in status.stdout and "last error: " in status.stdout

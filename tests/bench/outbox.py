"""The outbox and inbox on PostgreSQL, against publishing directly and the Redis store.

1. Throughput: N events (~60-byte JSON) reach the broker, confirmed:
   - direct:  Publisher.publish_many, 100 events per batch;
   - outbox:  100 events per transaction written with tx.publish, while a relay in the
              same process sends them; timed until the relay has every row confirmed.
   Rounds interleaved; medians.
2. Latency: one event per transaction at RATE events/s for SECONDS, relayed by a
   `kanin outbox relay` process; the time from each commit to its arrival at a consumer.
3. Inbox: a consumer with a no-op handler drains M messages with the Redis store, then
   with the inbox (each message a transaction: advisory lock, look-up, insert, commit).

    python tests/bench/outbox.py   # KANIN_BENCH_EVENTS=20000 KANIN_BENCH_ROUNDS=3
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framework import Consumer, Context, Event, Publisher, Settings, Worker
from framework.outbox import Inbox, Outbox
from framework.outbox.relay import Relay
from framework.outbox.tables import init

ROOT = Path(__file__).resolve().parents[2]
URL = os.environ.get("KANIN_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG = os.environ.get("KANIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("KANIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
N = int(os.environ.get("KANIN_BENCH_EVENTS", "20000"))
M = int(os.environ.get("KANIN_BENCH_INBOX_MESSAGES", "5000"))
ROUNDS = int(os.environ.get("KANIN_BENCH_ROUNDS", "3"))
RATE = int(os.environ.get("KANIN_BENCH_RATE", "1000"))
SECONDS = float(os.environ.get("KANIN_BENCH_SECONDS", "10"))
NAME = f"kanin-bench-{uuid.uuid4().hex[:8]}"
SCHEMA = NAME.replace("-", "_")
DB = f"{PG}?options=-csearch_path%3D{SCHEMA}"
SETTINGS = Settings(_env_file=None, broker_url=URL, outbox_url=DB)  # type: ignore[call-arg]


class Placed(Event, type="order.placed", version=1):
    order_id: str
    total_cents: int


def events(start: int, count: int) -> list[Placed]:
    return [Placed(order_id=f"o-{n}", total_cents=n) for n in range(start, start + count)]


async def direct(queue: str) -> float:
    async with Publisher(SETTINGS) as publisher:
        started = time.perf_counter()
        for start in range(0, N, 100):
            await publisher.publish_many(events(start, 100), exchange="", routing_key=queue)
        return N / (time.perf_counter() - started)


async def through_outbox(queue: str) -> float:
    outbox = Outbox(SETTINGS)
    async with Publisher(SETTINGS) as publisher:
        relay = Relay(DB, publisher)
        relaying = asyncio.create_task(relay.run())
        started = time.perf_counter()
        async with await psycopg.AsyncConnection.connect(DB) as conn:
            for start in range(0, N, 100):
                async with outbox.transaction(conn) as tx:
                    for event in events(start, 100):
                        await tx.publish(event, exchange="", routing_key=queue)
        while relay.sent < N:  # noqa: ASYNC110 - the relay counts; nothing signals
            await asyncio.sleep(0.005)
        took = time.perf_counter() - started
        relay.stop()
        await relaying
    return N / took


async def latency(queue: str) -> list[float]:
    """Commit-to-consumer seconds of RATE * SECONDS events, one per transaction."""
    relay = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "kanin"), "outbox", "relay", "--url", DB,
        env={**os.environ, "KANIN_BROKER_URL": URL}, cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    committed: dict[str, float] = {}
    arrived: dict[str, float] = {}
    total = int(RATE * SECONDS)
    connection = await aio_pika.connect(URL)
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=500)
        q = await channel.get_queue(queue)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived.setdefault(str(message.message_id), time.perf_counter())
            await message.ack()

        await q.consume(on_message)
        await asyncio.sleep(2.0)  # the relay connected and listening
        outbox = Outbox(SETTINGS)
        async with await psycopg.AsyncConnection.connect(DB) as conn:
            began = time.perf_counter()
            for n in range(total):
                async with outbox.transaction(conn) as tx:
                    message_id = await tx.publish(
                        Placed(order_id=f"l-{n}", total_cents=n), exchange="", routing_key=queue
                    )
                committed[message_id] = time.perf_counter()
                pause = began + (n + 1) / RATE - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
        deadline = time.perf_counter() + 30
        while len(arrived) < total and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    finally:
        await connection.close()
        relay.terminate()
        await asyncio.wait_for(relay.wait(), 30)
    return sorted(arrived[i] - committed[i] for i in committed if i in arrived)


async def inbox(queue: str, store: str) -> float:
    done = asyncio.Event()
    handled = 0

    class Noop(Consumer):
        idempotency = store

        async def handle(self, event: Placed, ctx: Context) -> None:
            nonlocal handled
            handled += 1
            if handled == M:
                done.set()

    Noop.queue = queue
    await started_and_stopped(Noop)  # the queue declared as the worker wants it
    async with Publisher(SETTINGS) as publisher:
        for start in range(0, M, 500):
            await publisher.publish_many(events(start, 500), exchange="", routing_key=queue)
    worker = Worker([Noop], SETTINGS, extensions=[Inbox(SETTINGS)])
    running = asyncio.create_task(worker.run())
    started = time.perf_counter()
    await asyncio.wait([running, asyncio.ensure_future(done.wait())], timeout=300,
                       return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    took = time.perf_counter() - started
    worker.stop()
    await running
    assert handled == M, handled
    return M / took


async def started_and_stopped(cls: type[Consumer]) -> None:
    worker = Worker([cls], SETTINGS, extensions=[Inbox(SETTINGS)])
    running = asyncio.create_task(worker.run())
    while not worker.ready and not running.done():  # noqa: ASYNC110 - a property
        await asyncio.sleep(0.01)
    worker.stop()
    await running


async def main() -> None:
    async with await psycopg.AsyncConnection.connect(PG, autocommit=True) as conn:
        await conn.execute(f"create schema {SCHEMA}")
    connection = await aio_pika.connect(URL)
    try:
        await init(DB)
        channel = await connection.channel()
        queue = await channel.declare_queue(f"{NAME}.q", durable=True)
        rates: dict[str, list[float]] = {"direct publish_many": [], "outbox + relay": []}
        for _ in range(ROUNDS):
            rates["direct publish_many"].append(await direct(queue.name))
            await queue.purge()
            rates["outbox + relay"].append(await through_outbox(queue.name))
            await queue.purge()
        waits = await latency(queue.name)
        await queue.purge()
        stores: dict[str, float] = {}
        for name, store in (("Redis store", REDIS), ("inbox (PostgreSQL)", DB)):
            work = f"{NAME}.{len(stores)}"
            stores[name] = await inbox(work, store)
            for leftover in (work, f"{work}.dlq"):
                await channel.queue_delete(leftover, if_unused=False, if_empty=False)
        await channel.queue_delete(queue.name, if_unused=False, if_empty=False)
    finally:
        await connection.close()
        async with await psycopg.AsyncConnection.connect(PG, autocommit=True) as conn:
            await conn.execute(f"drop schema {SCHEMA} cascade")
    base = statistics.median(rates["direct publish_many"])
    print(f"\noutbox throughput  ({N} events, {ROUNDS} interleaved rounds, median)")
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{r:,.0f}" for r in values)
        print(f"  {name:<22} {median:>8,.0f} events/s  {median / base:5.2f}x direct  [{runs}]")
    print(f"\ncommit to consumer  ({len(waits)} of {int(RATE * SECONDS)} events at {RATE}/s,"
          " one per transaction, a relay process)")  # fmt: skip
    if waits:

        def at(q: float) -> float:
            return waits[min(len(waits) - 1, int(q * len(waits)))] * 1000

        print(f"  p50 {at(0.5):.1f} ms  p95 {at(0.95):.1f} ms  p99 {at(0.99):.1f} ms  "
              f"max {waits[-1] * 1000:.1f} ms")  # fmt: skip
    print(f"\ninbox  ({M} messages, no-op handler, concurrency {SETTINGS.concurrency})")
    redis = stores["Redis store"]
    for name, rate in stores.items():
        print(f"  {name:<20} {rate:>8,.0f} messages/s  {rate / redis:5.2f}x Redis")


if __name__ == "__main__":
    asyncio.run(main())

"""Replaying a stream into a projection: kanin's replay against a raw aio-pika reader.

A stream of N events (~60-byte JSON bodies, type and version headers) is read from its
first offset to its last:
  - raw aio-pika: a consumer with x-stream-offset=first (prefetch 1000) that parses each
                  body with json.loads and acks it, until it has seen N;
  - kanin:        framework.eventlog.replay (what `kanin replay` runs) with a projection
                  whose handler does nothing: each event decoded into its Event class,
                  offsets checked, checkpoint (memory) saved once per batch of 100.
Rounds are interleaved (raw, kanin, raw, ...); each figure is the median of the rounds.
Then the PostgreSQL read model: one upsert per event, the checkpoint in the same
transaction, committed once per event (batch = 1) against once per 100 (the default).

    python tests/bench/stream_replay.py   # KANIN_BENCH_EVENTS=100000 KANIN_BENCH_ROUNDS=3
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framework import Event, Publisher, Settings
from framework.eventlog import Projection, ProjectionContext
from framework.eventlog.checkpoints import MemoryCheckpoints, PostgresCheckpoints
from framework.eventlog.replay import Replay, last_offset
from framework.tracing import Tracing
from framework.transport import open_transport

URL = os.environ.get("KANIN_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
PG = os.environ.get("KANIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
N = int(os.environ.get("KANIN_BENCH_EVENTS", "100000"))
N_PG = int(os.environ.get("KANIN_BENCH_PG_EVENTS", "20000"))
ROUNDS = int(os.environ.get("KANIN_BENCH_ROUNDS", "3"))
STREAM = f"kanin-bench-{uuid.uuid4().hex[:8]}.log"
SETTINGS = Settings(_env_file=None, broker_url=URL)  # type: ignore[call-arg]


class Placed(Event, type="order.placed", version=1):
    order_id: str
    total_cents: int


class NoOp(Projection):
    queue = STREAM
    name = f"{STREAM}.noop"

    async def handle(self, event: Placed, ctx: ProjectionContext) -> None:
        pass


class Totals(Projection):
    queue = STREAM
    name = f"{STREAM}.totals"

    async def prepare(self, db: Any) -> None:
        await db.execute(
            "create table if not exists totals (order_id text primary key, cents bigint)"
        )

    async def on_reset(self, db: Any) -> None:
        await db.execute("delete from totals")

    async def handle(self, event: Placed, ctx: ProjectionContext) -> None:
        await ctx.db.execute(
            "insert into totals values (%s, %s) on conflict (order_id) "
            "do update set cents = totals.cents + excluded.cents",
            [event.order_id, event.total_cents],
        )


async def raw_replay() -> float:
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=1000)
        queue = await channel.get_queue(STREAM, ensure=False)
        done = asyncio.get_running_loop().create_future()
        seen = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal seen
            json.loads(message.body)
            await message.ack()
            seen += 1
            if seen == N and not done.done():
                done.set_result(None)

        started = time.perf_counter()
        tag = await queue.consume(on_message, arguments={"x-stream-offset": "first"})
        await done
        took = time.perf_counter() - started
        await queue.cancel(tag)
        return N / took


async def kanin_replay(cls: type[Projection], store: Any, events: int, end: int) -> float:
    transport = open_transport(SETTINGS, "kanin-bench-replay")
    await transport.connect(0)
    try:
        async with Publisher(SETTINGS, transport) as publisher:
            job = Replay(transport, publisher, Tracing(None), {cls: store}, to_offset=events - 1)
            await job.reset(cls)
            started = time.perf_counter()
            outcome = await job.run(cls, end)
            took = time.perf_counter() - started
        assert outcome.handled == events and outcome.halted is None, outcome.line()
        return events / took
    finally:
        await transport.close()


async def main() -> None:
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(STREAM, durable=True, arguments={"x-queue-type": "stream"})
        try:
            async with Publisher(SETTINGS) as publisher:
                for start in range(0, N, 5000):
                    await publisher.publish_many(
                        (Placed(order_id=f"o-{i % 5000}", total_cents=i) for i in
                         range(start, min(N, start + 5000))),
                        exchange="", routing_key=STREAM,
                    )  # fmt: skip
            transport = open_transport(SETTINGS, "kanin-bench-end")
            await transport.connect(0)
            began = time.perf_counter()
            end = await last_offset(transport, STREAM)
            finding = time.perf_counter() - began
            await transport.close()
            assert end == N - 1, end
            memory = MemoryCheckpoints()
            contenders: dict[str, Callable[[], Awaitable[float]]] = {
                "aio-pika x-stream-offset=first": raw_replay,
                "kanin replay (no-op projection)": lambda: kanin_replay(NoOp, memory, N, end),
            }
            rates: dict[str, list[float]] = {name: [] for name in contenders}
            cpu: dict[str, list[float]] = {name: [] for name in contenders}
            for _ in range(ROUNDS):
                for name, run in contenders.items():
                    before = time.process_time()
                    rates[name].append(await run())
                    cpu[name].append((time.process_time() - before) / N * 1e6)
            postgres = await pg_rates(end)
        finally:
            await channel.queue_delete(STREAM)
    base = statistics.median(rates["aio-pika x-stream-offset=first"])
    print(f"\nstream replay  ({N} events, {ROUNDS} interleaved rounds, median)")
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{r:,.0f}" for r in values)
        print(
            f"  {name:<33} {median:>8,.0f} events/s  {median / base:5.2f}x aio-pika  "
            f"{statistics.median(cpu[name]):6.1f} us CPU/event  [{runs}]"
        )
    print(f"  finding the stream's end (once per replay): {finding:.2f}s")
    print(f"\nPostgreSQL read model  ({N_PG} events, one upsert each, checkpoint in the same"
          " transaction)")  # fmt: skip
    for batch, rate in postgres.items():
        print(f"  commit every {batch:>3} event(s)  {rate:>8,.0f} events/s  "
              f"{rate / postgres[1]:5.2f}x batch 1")  # fmt: skip


async def pg_rates(end: int) -> dict[int, float]:
    import psycopg

    schema = f"kanin_bench_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(PG, autocommit=True) as conn:
        await conn.execute(f"create schema {schema}")
    store = PostgresCheckpoints(f"{PG}?options=-csearch_path%3D{schema}")
    rates: dict[int, float] = {}
    try:
        for batch in (1, 100):
            Totals.batch = batch
            rates[batch] = await kanin_replay(Totals, store, N_PG, end)
    finally:
        await store.close()
        async with await psycopg.AsyncConnection.connect(PG, autocommit=True) as conn:
            await conn.execute(f"drop schema {schema} cascade")
    return rates


if __name__ == "__main__":
    asyncio.run(main())

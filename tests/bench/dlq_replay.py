"""Moving a DLQ back to work: `kanin dlq replay` against the raw aio-pika loop, one run.

A DLQ of N parked ~200-byte messages (kanin's error headers on each) is moved to its
work queue, every message confirmed by the broker before it leaves the DLQ.
  - raw aio-pika: the loop one writes by hand: queue.get(), publish the copy on a
                  confirm channel (awaiting the confirm), then ack the original;
  - kanin:        framework.ops.dlq.replay() (what `kanin dlq replay` runs): the copy
                  with x-attempt reset and the error headers dropped, confirmed before
                  its original is acked, nothing else in the DLQ touched.
Rounds are interleaved (raw, kanin, raw, ...); each figure is the median of the rounds.

    python tests/bench/dlq_replay.py     # KANIN_BENCH_MESSAGES=20000 KANIN_BENCH_ROUNDS=3
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

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framework import Settings
from framework.ops import dlq
from framework.transport import open_transport

URL = os.environ.get("KANIN_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
N = int(os.environ.get("KANIN_BENCH_MESSAGES", "20000"))
ROUNDS = int(os.environ.get("KANIN_BENCH_ROUNDS", "3"))
WORK = f"kanin-bench-{uuid.uuid4().hex[:8]}"
DLQ = f"{WORK}.dlq"
HEADERS = {
    "x-error-type": "PaymentTimeout",
    "x-error-message": "gave up after 4 attempts: provider timed out",
    "x-failed-at": "2026-11-30T10:00:00.000+00:00",
    "x-failed-consumer": "ChargePayment",
    "x-original-exchange": "shop.events",
    "x-original-routing-key": "inventory.reserved",
    "x-attempt": 4,
}


async def fill(channel: aio_pika.abc.AbstractChannel) -> None:
    exchange = channel.default_exchange
    for start in range(0, N, 1000):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        json.dumps({"order_id": f"o-{i}", "note": "x" * 160}).encode(),
                        message_id=str(uuid.uuid4()),
                        headers={**HEADERS, "x-idempotency-key": f"k-{i}"},
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=DLQ,
                )
                for i in range(start, min(N, start + 1000))
            )
        )


async def raw_replay() -> float:
    connection = await aio_pika.connect(URL)
    async with connection:
        reading = await connection.channel(publisher_confirms=False)
        publishing = await connection.channel(publisher_confirms=True)
        queue = await reading.get_queue(DLQ, ensure=False)
        started = time.perf_counter()
        moved = 0
        while (message := await queue.get(fail=False, no_ack=False)) is not None:
            headers = {k: v for k, v in message.headers.items() if not k.startswith("x-error")}
            headers["x-attempt"] = 1
            copy = aio_pika.Message(
                message.body,
                headers=headers,
                message_id=message.message_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            await publishing.default_exchange.publish(copy, routing_key=WORK)
            await message.ack()
            moved += 1
        assert moved == N, moved
        return N / (time.perf_counter() - started)


async def kanin_replay() -> float:
    settings = Settings(_env_file=None, broker_url=URL)  # type: ignore[call-arg]
    transport = open_transport(settings, "kanin-bench-replay")
    await transport.connect(0)
    try:
        started = time.perf_counter()
        tally = await dlq.replay(transport, settings, DLQ)
        assert tally.done == N, tally
        return N / (time.perf_counter() - started)
    finally:
        await transport.close()


async def main() -> None:
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(DLQ, durable=True)
        work = await channel.declare_queue(WORK, durable=True)
        contenders: dict[str, Callable[[], Awaitable[float]]] = {
            "aio-pika get/publish/ack": raw_replay,
            "kanin dlq replay": kanin_replay,
        }
        rates: dict[str, list[float]] = {name: [] for name in contenders}
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        try:
            for _ in range(ROUNDS):
                for name, run in contenders.items():
                    await fill(channel)
                    before = time.process_time()
                    rates[name].append(await run())
                    cpu[name].append((time.process_time() - before) / N * 1e6)
                    await work.purge()
        finally:
            await channel.queue_delete(DLQ)
            await channel.queue_delete(WORK)
    base = statistics.median(rates["aio-pika get/publish/ack"])
    print(f"\ndlq replay  ({N} messages, {ROUNDS} interleaved rounds, median)")
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{r:,.0f}" for r in values)
        print(
            f"  {name:<25} {median:>8,.0f} msg/s  {median / base:5.2f}x aio-pika  "
            f"{statistics.median(cpu[name]):6.1f} us CPU/msg  [{runs}]"
        )


if __name__ == "__main__":
    asyncio.run(main())

"""Throughput: kanin against raw aio-pika and FastStream, on the same broker, in one run.

Consume: drain a backlog of N persistent ~200-byte JSON messages at prefetch 100.
  - raw aio-pika: queue.consume() with a callback that acks each message;
  - FastStream:   a subscriber with a pydantic model argument (validation), acks on success;
  - kanin:        a Worker with a Consumer class (pydantic validation, no-op handler);
  - kanin+trace:  the same with tracing on: OpenTelemetry SDK, batch span processor and an
                  exporter that drops the spans (every message carries a W3C traceparent,
                  so each process span extracts its parent and links to it).
Publish: N events, in batches of 1000, waiting for all confirms.
  - raw aio-pika: json.dumps + Message with the same properties and headers as kanin's
                  envelope + gather(exchange.publish) per batch;
  - kanin:        Publisher.publish_many(events) per batch;
  - kanin+trace:  the same with a send span per message.
Consume and publish: drain N messages, each handler publishing one event (confirmed) on
a second connection before its message is acked.
  - raw aio-pika: a callback that publishes on a confirm channel of a second connection,
                  then acks;
  - kanin:        a handler that calls ctx.publish() (the worker's publishing connection).
Every kanin row runs twice: on the fast paths (the default: aiormq's and the SDK's
internals, on the versions kanin was tested with) and on the public path
(KANIN_FAST_PATHS=false: their public APIs only), marked "(public)".

Runs are interleaved (raw, FastStream, kanin, raw, ...) and each figure is the median of
the rounds; the time runs from the first message handled to the last one acked, so
connection setup is left out for every contender alike.

    python tests/bench/consume.py            # KANIN_BENCH_MESSAGES=20000 KANIN_BENCH_ROUNDS=3
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from framework import Consumer, Context, Event, Publisher, Settings, Worker
from framework.topology import QueueSpec, Topology

URL = os.environ.get("KANIN_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
N = int(os.environ.get("KANIN_BENCH_MESSAGES", "20000"))
ROUNDS = int(os.environ.get("KANIN_BENCH_ROUNDS", "3"))
PREFETCH = 100
QUEUE = f"kanin-bench-{uuid.uuid4().hex[:8]}"
REPLIES = f"{QUEUE}.replies"


class Item(Event):
    sku: str
    quantity: int
    price_cents: int


class OrderPlaced(Event, type="order.placed", version=1):
    order_id: str
    customer_email: str
    items: list[Item]
    note: str


class OrderSeen(Event, type="order.seen", version=1):
    order_id: str


def payload(i: int) -> dict[str, object]:
    return {
        "order_id": f"order-{i:08d}",
        "customer_email": f"customer{i % 1000}@example.com",
        "items": [
            {"sku": "rabbit-plush-xl", "quantity": 2, "price_cents": 1299},
            {"sku": "carrot-snack", "quantity": 5, "price_cents": 199},
        ],
        "note": "leave at the door",
    }


BODY_SIZE = len(json.dumps(payload(0)).encode())
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Dropping(SpanExporter):
    """Takes finished spans and throws them away: the SDK's cost without the network's."""

    def export(self, spans: object) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def traced() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    return provider


class Clock:
    def __init__(self) -> None:
        self.first = 0.0
        self.last = 0.0
        self.count = 0
        self.done = asyncio.Event()

    def tick(self) -> None:
        if not self.count:
            self.first = time.perf_counter()
        self.count += 1
        if self.count == N:
            self.last = time.perf_counter()
            self.done.set()

    def rate(self) -> float:
        return N / (self.last - self.first)


async def purge(channel: aio_pika.abc.AbstractChannel) -> None:
    await (await channel.get_queue(QUEUE, ensure=False)).purge()


async def fill(channel: aio_pika.abc.AbstractChannel) -> None:
    await purge(channel)
    body = json.dumps(payload(0)).encode()
    for start in range(0, N, 1000):
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(
                        body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, type="order.placed",
                        content_type="application/json", headers={"traceparent": TRACEPARENT},
                    ),
                    routing_key=QUEUE,
                )
                for _ in range(start, min(start + 1000, N))
            )
        )  # fmt: skip


async def raw_consume() -> float:
    clock = Clock()
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(QUEUE, durable=True, passive=True)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            clock.tick()

        tag = await queue.consume(on_message)
        await clock.done.wait()
        await queue.cancel(tag)
    return clock.rate()


async def faststream_consume() -> float:
    from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
    from pydantic import BaseModel

    class ItemModel(BaseModel):
        sku: str
        quantity: int
        price_cents: int

    class OrderModel(BaseModel):
        order_id: str
        customer_email: str
        items: list[ItemModel]
        note: str

    clock = Clock()
    broker = RabbitBroker(URL, logger=None)

    @broker.subscriber(
        RabbitQueue(QUEUE, durable=True, declare=False), channel=Channel(prefetch_count=PREFETCH)
    )
    async def handle(order: OrderModel) -> None:
        clock.tick()

    await broker.start()
    try:
        await clock.done.wait()
        await asyncio.sleep(0.05)  # FastStream acks after the handler returns
    finally:
        await broker.stop()
    return clock.rate()


def settings(fast: bool = True) -> Settings:
    return Settings(_env_file=None, broker_url=URL, topology="none.yaml", fast_paths=fast)  # type: ignore[call-arg]


async def kanin_consume(
    provider: TracerProvider | None = None, fast: bool = True, reply: bool = False
) -> float:
    clock = Clock()

    class Reserve(Consumer):
        queue = QUEUE
        prefetch = PREFETCH
        concurrency = PREFETCH

        async def handle(self, event: OrderPlaced, ctx: Context) -> None:
            if reply:
                await ctx.publish(OrderSeen(order_id=event.order_id), routing_key=REPLIES)
            clock.tick()

    topology = Topology(queues=[QueueSpec(name=QUEUE, dead_letter=False)])
    worker = Worker([Reserve], settings(fast), topology=topology, tracer_provider=provider)
    await worker.start()
    try:
        await clock.done.wait()
        channel = worker.channels[0]
        assert channel is not None
        await channel.drain()  # the last acks are on the wire: stop the clock here
        clock.last = time.perf_counter()
    finally:
        worker.stop()
        await worker.shutdown()
    return clock.rate()


async def raw_consume_and_publish() -> float:
    """Hand-written: publish a reply on a second connection's confirm channel, then ack."""
    clock = Clock()
    consuming = await aio_pika.connect(URL)
    publishing = await aio_pika.connect(URL)
    async with consuming, publishing:
        channel = await consuming.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        out = (await publishing.channel(publisher_confirms=True)).default_exchange
        queue = await channel.declare_queue(QUEUE, durable=True, passive=True)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            order = json.loads(message.body)
            reply = json.dumps({"order_id": order["order_id"]}).encode()
            await out.publish(envelope(reply), routing_key=REPLIES, mandatory=True)
            await message.ack()
            clock.tick()

        tag = await queue.consume(on_message)
        await clock.done.wait()
        await queue.cancel(tag)
    return clock.rate()


def envelope(body: bytes) -> aio_pika.Message:
    """What hand-written code sets to put kanin's wire contract on a message."""
    message_id = str(uuid.uuid4())
    return aio_pika.Message(
        body,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        content_type="application/json",
        type="order.placed",
        message_id=message_id,
        correlation_id=message_id,
        timestamp=datetime.now(UTC),
        app_id="bench",
        headers={"x-event-version": 1, "x-attempt": 1},
    )


async def raw_publish(channel: aio_pika.abc.AbstractChannel) -> float:
    rows = [payload(i) for i in range(N)]
    exchange = channel.default_exchange
    started = time.perf_counter()
    for start in range(0, N, 1000):
        await asyncio.gather(
            *(
                exchange.publish(envelope(json.dumps(row).encode()), routing_key=QUEUE)
                for row in rows[start : start + 1000]
            )
        )
    return N / (time.perf_counter() - started)


async def kanin_publish(publisher: Publisher) -> float:
    events = [OrderPlaced.model_validate(payload(i)) for i in range(N)]
    started = time.perf_counter()
    for start in range(0, N, 1000):
        await publisher.publish_many(events[start : start + 1000], exchange="", routing_key=QUEUE)
    return N / (time.perf_counter() - started)


async def measured(run: Callable[[], Awaitable[float]], cpu: list[float]) -> float:
    """Run one contender; note this process's CPU time per message (the client's cost,
    steadier than msg/s on a machine whose cores the broker shares)."""
    started = time.process_time()
    rate = await run()
    cpu.append((time.process_time() - started) / N * 1e6)
    return rate


def report(
    title: str, results: dict[str, list[float]], cpu: dict[str, list[float]], baseline: str
) -> None:
    base = statistics.median(results[baseline])
    print(f"\n{title}  ({N} messages of {BODY_SIZE} B, {ROUNDS} interleaved rounds, median)")
    for name, rates in results.items():
        median = statistics.median(rates)
        runs = ", ".join(f"{r:,.0f}" for r in rates)
        print(
            f"  {name:<21} {median:>8,.0f} msg/s  {median / base:5.2f}x {baseline}  "
            f"{statistics.median(cpu[name]):6.1f} us CPU/msg  [{runs}]"
        )


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    tracing = traced()
    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(QUEUE, durable=True)
        replies = await channel.declare_queue(REPLIES, durable=True)
        try:
            consumers: dict[str, Callable[[], Awaitable[float]]] = {
                "aio-pika": raw_consume,
                "faststream": faststream_consume,
                "kanin": kanin_consume,
                "kanin (public)": lambda: kanin_consume(fast=False),
                "kanin+trace": lambda: kanin_consume(tracing),
                "kanin+trace (public)": lambda: kanin_consume(tracing, fast=False),
            }
            repliers: dict[str, Callable[[], Awaitable[float]]] = {
                "aio-pika": raw_consume_and_publish,
                "kanin": lambda: kanin_consume(reply=True),
                "kanin (public)": lambda: kanin_consume(fast=False, reply=True),
            }
            publishers = {
                "kanin": Publisher(settings()),
                "kanin (public)": Publisher(settings(fast=False)),
                "kanin+trace": Publisher(settings(), tracer_provider=tracing),
            }
            consume, reply = Results(consumers), Results(repliers)
            publish = Results(["aio-pika", *publishers])
            for publisher in publishers.values():
                await publisher.__aenter__()
            try:
                for _ in range(ROUNDS):
                    for name, run in consumers.items():
                        await fill(channel)
                        await consume.measure(name, run)
                    for name, run in repliers.items():
                        await fill(channel)
                        await reply.measure(name, run)
                        await replies.purge()
                    await purge(channel)
                    await publish.measure("aio-pika", lambda: raw_publish(channel))
                    for name, publisher in publishers.items():
                        await purge(channel)
                        await publish.measure(name, lambda p=publisher: kanin_publish(p))  # type: ignore[misc]
            finally:
                for publisher in publishers.values():
                    await publisher.close()
            report("consume", consume.rates, consume.cpu, "aio-pika")
            fs = statistics.median(consume.rates["faststream"])
            for name in ("kanin", "kanin (public)"):
                print(f"  {name} / faststream: {statistics.median(consume.rates[name]) / fs:.2f}x")
            report("publish (confirmed, batches of 1000)", publish.rates, publish.cpu, "aio-pika")
            report(
                "consume, each handler publishing one event (confirmed, second connection)",
                reply.rates, reply.cpu, "aio-pika",
            )  # fmt: skip
        finally:
            await channel.queue_delete(QUEUE)
            await channel.queue_delete(REPLIES)
            tracing.shutdown()


class Results:
    """Rates and CPU per message of each contender, round after round."""

    def __init__(self, names: Iterable[str]) -> None:
        self.rates: dict[str, list[float]] = {name: [] for name in names}
        self.cpu: dict[str, list[float]] = {name: [] for name in self.rates}

    async def measure(self, name: str, run: Callable[[], Awaitable[float]]) -> None:
        self.rates[name].append(await measured(run, self.cpu[name]))


if __name__ == "__main__":
    asyncio.run(main())

"""How each contender of tests/bench/peers.py publishes: with its own API, since the peers'
message formats differ. A sender takes a list of payloads and returns once they are sent
(confirmed where the API confirms); ``paced`` sends at a fixed rate and stamps each
payload with its wall-clock send time just before it goes out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aio_pika
import consume as base

URL = base.URL
Payload = dict[str, Any]
Send = Callable[[list[Payload]], Awaitable[None]]


def payload(i: int, fail: bool = False) -> Payload:
    return {**base.payload(i), "i": i, "sent": 0.0, "fail": fail}


@asynccontextmanager
async def raw(queue: str) -> Any:
    connection = await aio_pika.connect(URL)
    async with connection:
        exchange = (await connection.channel()).default_exchange

        async def send(rows: list[Payload]) -> None:
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            json.dumps(row).encode(),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            content_type="application/json",
                        ),
                        routing_key=queue,
                    )
                    for row in rows
                )
            )

        yield send


@asynccontextmanager
async def kanin(queue: str) -> Any:
    from peer_kanin import BenchOrder

    from framework import Publisher

    async with Publisher(base.settings()) as publisher:

        async def send(rows: list[Payload]) -> None:
            events = [BenchOrder.model_validate(row) for row in rows]
            await publisher.publish_many(events, exchange="", routing_key=queue)

        yield send


@asynccontextmanager
async def faststream(queue: str) -> Any:
    from faststream.rabbit import RabbitBroker

    broker = RabbitBroker(URL, logger=None)
    await broker.connect()
    try:

        async def send(rows: list[Payload]) -> None:
            await asyncio.gather(*(broker.publish(row, queue=queue, persist=True) for row in rows))

        yield send
    finally:
        await broker.stop()


@contextmanager
def dramatiq(queue: str) -> Iterator[Callable[[list[Payload]], None]]:
    from peer_workers import dramatiq_app

    broker, actor = dramatiq_app(queue)
    try:
        yield lambda rows: [actor.send(row) for row in rows] and None
    finally:
        broker.close()


@contextmanager
def celery(queue: str) -> Iterator[Callable[[list[Payload]], None]]:
    from peer_workers import celery_app

    app, task = celery_app(queue)
    with app.producer_or_acquire() as producer:
        yield lambda rows: [task.apply_async((row,), producer=producer) for row in rows] and None


ASYNC = {"raw aio-pika": raw, "kanin": kanin, "FastStream": faststream}
SYNC = {"Dramatiq": dramatiq, "Celery": celery}


async def backlog(name: str, queue: str, count: int, fail_every: int = 0) -> None:
    """``count`` payloads, every ``fail_every``-th one marked to fail once."""
    rows = [payload(i, bool(fail_every) and i % fail_every == 0) for i in range(count)]
    chunks = [rows[start : start + 1000] for start in range(0, count, 1000)]
    if name in ASYNC:
        async with ASYNC[name](queue) as send:
            for chunk in chunks:
                await send(chunk)
        return

    def run() -> None:
        with SYNC[name](queue) as send:
            for chunk in chunks:
                send(chunk)

    await asyncio.to_thread(run)


async def paced(name: str, queue: str, rate: float, count: int) -> float:
    """Send ``count`` payloads at ``rate`` a second; the rate reached."""
    rows = [payload(i) for i in range(count)]

    def due(started: float, sent: int) -> list[Payload]:
        now = time.time()
        batch = rows[sent : min(count, int((now - started) * rate) + 1)]
        for row in batch:
            row["sent"] = now
        return batch

    if name in ASYNC:
        async with ASYNC[name](queue) as send:
            started, sent = time.time(), 0
            while sent < count:
                batch = due(started, sent)
                if batch:
                    await send(batch)
                    sent += len(batch)
                else:
                    await asyncio.sleep(0.001)
            return count / (time.time() - started)

    def run() -> float:
        with SYNC[name](queue) as send:
            started, sent = time.time(), 0
            while sent < count:
                batch = due(started, sent)
                if batch:
                    send(batch)
                    sent += len(batch)
                else:
                    time.sleep(0.001)
            return count / (time.time() - started)

    return await asyncio.to_thread(run)

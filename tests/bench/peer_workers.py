"""The worker process of each peer in tests/bench/peers.py, written the way its docs show.

    python tests/bench/peer_workers.py raw|faststream|dramatiq|celery

The queue is ``$BENCH_QUEUE``; the handler parses the order and hands it to the recorder
(peer_record.py). A message whose first attempt fails goes through the peer's own retry:
  - raw aio-pika: the hand-written way, a copy published (confirmed) to ``<queue>.wait``
    (``x-message-ttl`` 1 s, dead-lettered back to the queue), then the original acked;
  - FastStream: ``AckPolicy.NACK_ON_ERROR``, the message requeued at once (FastStream has
    no delayed retry of its own);
  - Dramatiq: its Retries middleware, ``max_retries=1``, backoff 1 s (its delay queue);
  - Celery: ``self.retry(countdown=1)`` (a copy with an ETA, held by the worker).
kanin's worker is ``kanin run peer_kanin`` (peer_kanin.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

from peer_record import RECORDER, Flaky

URL = os.environ.get("KANIN_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
QUEUE = os.environ.get("BENCH_QUEUE", "kanin-bench-peer")
PREFETCH = 100
THREADS = 8
RETRY_MS = 1000


def record(order: dict[str, Any]) -> None:
    RECORDER.handle(order["i"], order["sent"], order["fail"])


async def raw() -> None:
    import aio_pika

    connection = await aio_pika.connect(URL)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(QUEUE, durable=True)
        retries = await connection.channel(publisher_confirms=True)
        wait = f"{QUEUE}.wait"
        await retries.declare_queue(
            wait,
            durable=True,
            arguments={
                "x-message-ttl": RETRY_MS,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": QUEUE,
            },
        )

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            try:
                record(json.loads(message.body))
            except Flaky:
                copy = aio_pika.Message(
                    message.body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    content_type=message.content_type,
                )
                await retries.default_exchange.publish(copy, routing_key=wait)
            await message.ack()

        await queue.consume(on_message)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


def faststream() -> None:
    from faststream import AckPolicy, FastStream
    from faststream.rabbit import Channel, RabbitBroker, RabbitQueue
    from pydantic import BaseModel

    class Item(BaseModel):
        sku: str
        quantity: int
        price_cents: int

    class OrderModel(BaseModel):
        order_id: str
        customer_email: str
        items: list[Item]
        note: str
        i: int
        sent: float
        fail: bool

    broker = RabbitBroker(URL, logger=None)

    @broker.subscriber(
        RabbitQueue(QUEUE, durable=True),
        channel=Channel(prefetch_count=PREFETCH),
        ack_policy=AckPolicy.NACK_ON_ERROR,
    )
    async def handle(order: OrderModel) -> None:
        RECORDER.handle(order.i, order.sent, order.fail)

    asyncio.run(FastStream(broker, logger=None).run())


def dramatiq_app(queue: str) -> Any:
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=URL)
    dramatiq.set_broker(broker)
    actor = dramatiq.actor(
        record,
        queue_name=queue,
        actor_name=queue,
        max_retries=1,
        min_backoff=RETRY_MS,
        max_backoff=RETRY_MS,
    )
    return broker, actor


def dramatiq() -> None:
    from dramatiq import Worker

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # its threads too: sigwait
    broker, _ = dramatiq_app(QUEUE)
    worker = Worker(broker, worker_threads=THREADS)
    worker.start()
    signal.sigwait({signal.SIGTERM})
    worker.stop()


def celery_app(queue: str) -> Any:
    from celery import Celery

    app = Celery("bench", broker=URL)
    app.conf.update(
        task_default_queue=queue,
        task_acks_late=True,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_enable_remote_control=False,
    )

    @app.task(name="bench.handle", bind=True, max_retries=1, ignore_result=True)
    def handle(self: Any, order: dict[str, Any]) -> None:
        try:
            record(order)
        except Flaky as exc:
            raise self.retry(exc=exc, countdown=RETRY_MS / 1000) from None

    return app, handle


def celery() -> None:
    app, _ = celery_app(QUEUE)
    worker = app.Worker(
        pool="threads",
        concurrency=THREADS,
        loglevel="WARNING",
        without_heartbeat=True,
        without_gossip=True,
        without_mingle=True,
        quiet=True,
    )
    worker.start()


if __name__ == "__main__":
    {
        "raw": lambda: asyncio.run(raw()),
        "faststream": faststream,
        "dramatiq": dramatiq,
        "celery": celery,
    }[sys.argv[1]]()

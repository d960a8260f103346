"""Drain, in the benchmark process: raw aio-pika, kanin, FastStream, Dramatiq and Celery.

A backlog of N persistent order messages (~230 bytes of JSON) is published by each
contender's own API (their formats differ), then drained by a handler that reads the
parsed payload and does nothing else. Measured from the first message handled to the
last, with the client process's CPU time per message. Prefetch and concurrency:
  - raw aio-pika, kanin, FastStream: prefetch 100 (kanin and FastStream: concurrency 100);
  - Dramatiq: its RabbitMQ broker, one worker with 8 threads (its default), prefetch 16;
  - Celery: its AMQP transport, a worker with the threads pool, concurrency 8, prefetch
    multiplier 4 (its default), acks after the task (acks_late).
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import consume as base

N, URL = base.N, base.URL
ROUNDS = base.ROUNDS
THREADS = 8


class Tally:
    """Handled messages counted from worker threads: when the first and the N-th came."""

    def __init__(self) -> None:
        self.count = 0
        self.first = self.last = 0.0
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def tick(self) -> None:
        with self.lock:
            if not self.count:
                self.first = time.perf_counter()
            self.count += 1
            if self.count == N:
                self.last = time.perf_counter()
                self.finished.set()

    def rate(self) -> float:
        assert self.count == N, self.count
        return N / (self.last - self.first)


def dramatiq_drain() -> tuple[float, float]:
    """Publish N with ``actor.send``, then drain them with one Dramatiq worker."""
    import dramatiq
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    queue = f"kanin-bench-dramatiq-{uuid.uuid4().hex[:8]}"
    broker = RabbitmqBroker(url=URL)
    dramatiq.set_broker(broker)
    tally = Tally()

    def handle(order: dict[str, object]) -> None:
        assert order["order_id"]
        tally.tick()

    actor = dramatiq.actor(handle, queue_name=queue, max_retries=0, actor_name=queue)
    try:
        for i in range(N):
            actor.send(base.payload(i))
        worker = dramatiq.Worker(broker, worker_threads=THREADS)
        before = time.process_time()
        worker.start()
        broker.join(queue, timeout=600_000)
        worker.join()
        used = time.process_time() - before
        worker.stop()
        return tally.rate(), used / N * 1e6
    finally:
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            broker.channel.queue_delete(name)
        broker.close()


def celery_drain() -> tuple[float, float]:
    """Publish N with ``task.delay``, then drain them with a Celery worker in this process."""
    from celery import Celery

    queue = f"kanin-bench-celery-{uuid.uuid4().hex[:8]}"
    app = Celery("bench", broker=URL)
    app.conf.update(
        task_default_queue=queue, task_acks_late=True, worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        worker_redirect_stdouts=False, worker_enable_remote_control=False,
    )  # fmt: skip
    tally = Tally()

    @app.task(name=f"bench.handle.{queue}", ignore_result=True)
    def handle(order: dict[str, object]) -> None:
        assert order["order_id"]
        tally.tick()

    with app.producer_or_acquire() as producer:
        for i in range(N):
            handle.apply_async((base.payload(i),), producer=producer)
    worker = app.Worker(pool="threads", concurrency=THREADS, loglevel="WARNING",
                        without_heartbeat=True, without_gossip=True, without_mingle=True,
                        quiet=True)  # fmt: skip
    thread = threading.Thread(target=worker.start, daemon=True)
    before = time.process_time()
    thread.start()
    try:
        assert tally.finished.wait(600), tally.count
        used = time.process_time() - before
        return tally.rate(), used / N * 1e6
    finally:
        worker.stop(in_sighandler=False)
        thread.join(30)
        with app.connection_for_write() as connection:
            connection.default_channel.queue_delete(queue)
            connection.default_channel.exchange_delete(queue)


async def timed(run: Callable[[], Awaitable[float]]) -> tuple[float, float]:
    before = time.process_time()
    rate = await run()
    return rate, (time.process_time() - before) / N * 1e6


async def drain() -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Messages/s and CPU µs per message of each contender, round after round."""
    connection = await aio_pika.connect(URL)
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(base.QUEUE, durable=True)
        contenders: dict[str, tuple[Callable[[], Awaitable[tuple[float, float]]], bool]] = {
            "raw aio-pika": (lambda: timed(base.raw_consume), True),
            "kanin": (lambda: timed(base.kanin_consume), True),
            "FastStream": (lambda: timed(base.faststream_consume), True),
            "Dramatiq": (lambda: asyncio.to_thread(dramatiq_drain), False),
            "Celery": (lambda: asyncio.to_thread(celery_drain), False),
        }
        try:
            for _ in range(ROUNDS):
                for name, (run, backlog) in contenders.items():
                    if backlog:
                        await base.fill(channel)
                    rate, used = await run()
                    rates.setdefault(name, []).append(rate)
                    cpu.setdefault(name, []).append(used)
        finally:
            await channel.queue_delete(base.QUEUE)
    return rates, cpu

"""A worker's retry and dead-letter flow, on RabbitMQ and on the embedded broker
(``memory://``): the same consumer classes, the same outcome."""

from __future__ import annotations

import pytest

from framework import Consumer, Context, Publisher, RetryPolicy
from framework.topology import QueueSpec, Topology
from framework.transport.embedded import broker_for
from tests.conftest import AMQP_URL
from tests.integration.apps.slow import Job
from tests.integration.worker_kit import amqp, count, eventually, running, settings


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.integration)])
def broker_url(request: pytest.FixtureRequest, prefix: str) -> str:
    return f"memory://{prefix}" if request.param == "memory" else AMQP_URL


async def messages_in(url: str, queue: str) -> int:
    if url.startswith("memory://"):
        return len(broker_for(url).queues[queue].messages)
    async with amqp() as channel:
        return await count(channel, queue)


async def test_retries_then_success_and_dead_letters(prefix: str, broker_url: str) -> None:
    attempts: dict[int, list[int]] = {}
    follow_ups: list[int] = []

    class Work(Consumer):
        queue = f"{prefix}.work"
        retry = RetryPolicy(attempts=3, initial=0.1, backoff="fixed")

        async def handle(self, event: Job, ctx: Context) -> None:
            attempts.setdefault(event.n, []).append(ctx.attempt)
            if event.n == 2 or ctx.attempt < 3:  # 1: fails twice then works; 2: always fails
                raise RuntimeError(f"job {event.n} attempt {ctx.attempt}")
            await ctx.publish(Job(n=event.n * 10), exchange="", routing_key=f"{prefix}.next")

    class Next(Consumer):
        queue = f"{prefix}.next"

        async def handle(self, event: Job, ctx: Context) -> None:
            follow_ups.append(event.n)

    topology = Topology(queues=[QueueSpec(name=f"{prefix}.work"), QueueSpec(name=f"{prefix}.next")])
    async with running(Work, Next, topology=topology, broker_url=broker_url) as worker:
        async with Publisher(settings(broker_url=broker_url)) as publisher:
            for n in (1, 2):
                await publisher.publish(Job(n=n), exchange="", routing_key=f"{prefix}.work")
        stats = worker.runners[0].stats
        await eventually(lambda: follow_ups == [10] and stats.dead_lettered == 1, within=20)
        assert await messages_in(broker_url, f"{prefix}.work.dlq") == 1
        assert await messages_in(broker_url, f"{prefix}.work") == 0
    assert attempts == {1: [1, 2, 3], 2: [1, 2, 3]}
    assert (stats.handled, stats.retried, stats.dead_lettered) == (1, 4, 1)

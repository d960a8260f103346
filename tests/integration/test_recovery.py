"""Connections that come back: publishers and workers through a fault proxy, and a
publisher whose connection the broker closes. The RabbitMQ on 5672 is never touched:
outages happen in the proxy, or to this test's own connections only."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from framework import Consumer, Context, Event, Publisher, PublishFailed
from framework.topology import QueueSpec, Topology
from tests.conftest import BrokerAdmin
from tests.integration.faults import FaultProxy
from tests.integration.worker_kit import (
    amqp,
    close_connections_soon,
    count,
    drain,
    eventually,
    running,
    settings,
    wait_for_messages,
)

pytestmark = pytest.mark.integration


class Tick(Event, type="test.tick", version=1):
    n: int


async def declare(queue: str) -> None:
    async with amqp() as channel:
        await channel.declare_queue(queue, durable=True)


async def test_a_cut_publisher_publishes_again_after_the_outage(prefix: str) -> None:
    queue = f"{prefix}.ticks"
    await declare(queue)
    timeout = 1.0
    outcomes: list[tuple[float, str, str]] = []  # (when, message id or "", error type)
    async with FaultProxy() as proxy:
        publisher = Publisher(settings(broker_url=proxy.url(), publish_timeout=timeout))
        async with publisher:

            async def publish(n: int) -> None:
                try:
                    mid = await publisher.publish(Tick(n=n), exchange="", routing_key=queue)
                    outcomes.append((time.monotonic(), mid, ""))
                except Exception as exc:
                    outcomes.append((time.monotonic(), "", type(exc).__name__))

            n = 0
            while len(outcomes) < 20:
                await publish(n := n + 1)
            cut_at = time.monotonic()
            proxy.refuse()
            proxy.cut()
            while time.monotonic() < cut_at + 2.5:  # publishes go on during the outage
                await publish(n := n + 1)
            back_at = time.monotonic()
            await proxy.accept()
            while time.monotonic() < back_at + timeout + 1.5:
                await publish(n := n + 1)
    errors = [(at, kind) for at, _, kind in outcomes if kind]
    assert errors, "the outage produced no error: the proxy did not cut"
    assert {kind for _, kind in errors} == {"PublishFailed"}
    assert all(cut_at <= at <= back_at + timeout + 0.5 for at, _ in errors), errors
    after = [kind for at, _, kind in outcomes if at > back_at + timeout + 0.5]
    assert after and not any(after), "publishes failed after the broker was back"
    confirmed = [mid for _, mid, _ in outcomes if mid]
    async with amqp() as channel:
        got = await wait_for_messages(channel, queue, len(confirmed))
    assert set(confirmed) <= {m.message_id for m in got}, "a confirmed message was lost"


async def test_a_publisher_recovers_after_the_broker_closes_its_connection(
    prefix: str, admin: BrokerAdmin
) -> None:
    queue = f"{prefix}.ticks"
    await declare(queue)
    service = f"{prefix}-svc"
    async with Publisher(settings(service_name=service, publish_timeout=10.0)) as publisher:
        first = await publisher.publish(Tick(n=1), exchange="", routing_key=queue)
        assert await close_connections_soon(admin, f"{service}-publisher") == 1
        second = await publisher.publish(Tick(n=2), exchange="", routing_key=queue)
        ids = await publisher.publish_many([Tick(n=3), Tick(n=4)], exchange="", routing_key=queue)
        assert publisher.transport.reconnects == 1
    async with amqp() as channel:
        got = await wait_for_messages(channel, queue, 4)
    assert [m.message_id for m in got] == [first, second, *ids]


async def test_a_publish_cut_before_its_confirm_is_sent_again_with_the_same_identity(
    prefix: str,
) -> None:
    queue = f"{prefix}.ticks"
    await declare(queue)
    async with (
        FaultProxy() as proxy,
        Publisher(settings(broker_url=proxy.url(), publish_timeout=15.0)) as publisher,
    ):
        first = await publisher.publish(Tick(n=6), exchange="", routing_key=queue)
        proxy.stall("to_client")  # the broker takes the next message; its confirm is held
        sending = asyncio.create_task(publisher.publish(Tick(n=7), exchange="", routing_key=queue))
        async with amqp() as channel:
            await eventually_async(lambda: count(channel, queue), 2)
        assert not sending.done()
        proxy.cut()
        proxy.resume()
        message_id = await asyncio.wait_for(sending, 15)
        assert publisher.transport.reconnects == 1
    async with amqp() as channel:
        got = await wait_for_messages(channel, queue, 3)
        assert not await drain(channel, queue)
    assert [m.message_id for m in got] == [first, message_id, message_id]
    assert got[1].headers == got[2].headers
    assert got[1].body == got[2].body


async def eventually_async(read: object, expected: int, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await read() == expected:  # type: ignore[operator]
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not {expected} within {within}s")


async def test_a_publish_during_an_outage_fails_within_one_timeout(prefix: str) -> None:
    async with (
        FaultProxy() as proxy,
        Publisher(settings(broker_url=proxy.url(), publish_timeout=1.5)) as publisher,
    ):
        proxy.refuse()
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(PublishFailed) as failure:
            await publisher.publish(Tick(n=1), exchange="", routing_key=f"{prefix}.x")
        took = time.monotonic() - started
    assert 1.4 <= took < 3.0, f"took {took:.1f}s for a 1.5s bound"
    message = str(failure.value)
    assert "the default exchange" in message and f"{prefix}.x" in message
    assert "connection refused" in message, message


async def test_a_worker_behind_a_cut_proxy_resumes_consuming(prefix: str) -> None:
    queue = f"{prefix}.work"
    runs: Counter[int] = Counter()

    class Slow(Consumer):
        queue = f"{prefix}.work"
        prefetch = 5

        async def handle(self, event: Tick, ctx: Context) -> None:
            await asyncio.sleep(0.02)
            runs[event.n] += 1

    specs = Topology(queues=[QueueSpec(name=queue)])
    async with (
        FaultProxy() as proxy,
        running(Slow, topology=specs, broker_url=proxy.url()) as worker,
    ):
        async with Publisher(settings()) as publisher:
            await publisher.publish_many(
                (Tick(n=n) for n in range(60)), exchange="", routing_key=queue
            )
        await eventually(lambda: len(runs) >= 10, what="10 handled")
        proxy.cut(mid_frame=True)  # the next delivery frame arrives halved
        await eventually(lambda: worker.reconnects >= 1, what="a reconnect")
        await eventually(lambda: len(runs) == 60, within=30, what="all 60 handled")
        assert worker.ready
    assert max(runs.values()) == 1, "a message was handled twice"
    async with amqp() as channel:
        assert await count(channel, queue) == 0

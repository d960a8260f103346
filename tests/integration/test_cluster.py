"""On a 3-node RabbitMQ cluster of the suite's own (tests/cluster.py): a node that goes
away mid-stream, and a broker that blocks publishing. The RabbitMQ on 5672 is untouched.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import aio_pika
import pytest

from framework import Consumer, Context, Event, Publisher, PublishFailed, RetryPolicy, Worker
from framework.topology import QueueSpec, Topology
from framework.transport.amqp import AmqpTransport
from tests.cluster import Cluster, require_nodes
from tests.integration.test_probes import fetch, samples
from tests.integration.worker_kit import eventually, settings, started

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    require_nodes("cluster")
    nodes = Cluster()
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.stop()


class Order(Event, type="test.order", version=1):
    n: int


async def test_a_node_going_away_mid_stream_loses_and_repeats_nothing(
    cluster: Cluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"{prefix}.orders"
    runs: Counter[int] = Counter()

    class Handle(Consumer):
        async def handle(self, event: Order, ctx: Context) -> None:
            await asyncio.sleep(0.005)
            runs[event.n] += 1

    Handle.queue = queue
    policy = RetryPolicy(attempts=3, initial=0.5, max=1.0)
    specs = Topology(queues=[QueueSpec(name=queue, type="quorum", retry=policy)])
    config = settings(
        broker_url=cluster.url(),
        service_name=f"{prefix}-worker",
        idempotency_url="redis://127.0.0.1:6379/0",
        idempotency_retention=600,
        publish_timeout=20.0,
    )
    worker = Worker([Handle], config, topology=specs)
    confirmed: list[int] = []
    failed: list[str] = []
    async with started(worker):
        assert isinstance(worker.transport, AmqpTransport)
        node = cluster.node_of(worker.transport.consuming.host)
        # The publisher goes to the worker's node first, so both lose their connection.
        others = [n.host for n in cluster.nodes if n is not node]
        monkeypatch.setattr("framework.transport.amqp.random.shuffle", lambda order: None)
        url = f"amqp://guest:guest@{','.join([node.host, *others])}/"
        publisher = Publisher(
            settings(broker_url=url, publish_timeout=20.0, service_name=f"{prefix}-orders")
        )

        async def publish_stream() -> None:
            async with publisher:
                for n in range(600):
                    try:
                        await publisher.publish(Order(n=n), exchange="", routing_key=queue)
                        confirmed.append(n)
                    except PublishFailed as exc:
                        failed.append(str(exc))
                    await asyncio.sleep(0.005)

        stream = asyncio.create_task(publish_stream())
        await eventually(lambda: len(runs) >= 100, within=30, what="100 handled")
        assert isinstance(publisher.transport, AmqpTransport)
        assert publisher.transport.publishing.host == node.host
        await asyncio.to_thread(node.stop_app)
        stopped = time.monotonic()
        handled_then = len(runs)
        try:
            await eventually(
                lambda: worker.transport.connected and worker.ready and len(runs) > handled_then,
                within=10,
                what="consuming again via another host",
            )
            back_after = time.monotonic() - stopped
            assert worker.transport.consuming.host != node.host
            await asyncio.wait_for(stream, 120)
            await eventually(
                lambda: set(confirmed) <= set(runs), within=60, what="every confirmed handled"
            )
        finally:
            await asyncio.to_thread(node.start_app)
    assert back_after < 10
    assert publisher.transport.reconnects == 1  # the publisher moved to another node too
    assert len(confirmed) >= 500, f"only {len(confirmed)} of 600 confirmed: {failed[:3]}"
    assert set(confirmed) <= set(runs), "a confirmed message was lost"
    assert max(runs.values()) == 1, "a message was handled twice"


async def test_a_blocked_broker_blocks_publishing_not_acks_and_readyz_says_why(
    cluster: Cluster, prefix: str
) -> None:
    queue = f"{prefix}.work"
    gate = asyncio.Event()
    handled: list[int] = []

    class Gated(Consumer):
        prefetch = 5

        async def handle(self, event: Order, ctx: Context) -> None:
            await gate.wait()
            handled.append(event.n)

    Gated.queue = queue
    url = cluster.url()
    async with await aio_pika.connect(f"amqp://guest:guest@{cluster.nodes[0].host}/") as connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments={"x-queue-type": "quorum"})
        for n in range(30):
            await channel.default_exchange.publish(
                aio_pika.Message(Order(n=n).to_json(), type="test.order"), routing_key=queue
            )
    config = settings(
        broker_url=url, http_port=0, publish_timeout=60.0, service_name=f"{prefix}-gated"
    )
    specs = Topology(queues=[QueueSpec(name=queue, type="quorum", dead_letter=False)])
    worker = Worker([Gated], config, topology=specs)
    async with started(worker):
        assert worker.probes is not None
        port = worker.probes.port
        await worker.publisher.publish(Order(n=99), exchange="", routing_key=queue)  # opens it
        for node in cluster.nodes:
            await asyncio.to_thread(node.must, "set_vm_memory_high_watermark", "0.00001")
        try:
            sending = asyncio.create_task(
                worker.publisher.publish(Order(n=100), exchange="", routing_key=queue)
            )
            await eventually(
                lambda: worker.transport.blocked is not None,
                within=20,
                what="the publishing connection blocked",
            )
            status, body = await fetch(port, "/readyz")
            assert status == 503
            assert "publishing blocked by the broker: low on memory" in body, body
            metrics = samples((await fetch(port, "/metrics"))[1])
            assert metrics[("kanin_broker_blocked", ())] == 1
            gate.set()  # the handlers finish: their acks go out on the consuming connection
            await eventually(
                lambda: worker.runners[0].stats.acked >= 31,
                within=20,
                what="acks sent while publishing is blocked",
            )
            assert worker.transport.blocked is not None and not sending.done()
        finally:
            for node in cluster.nodes:
                await asyncio.to_thread(node.must, "set_vm_memory_high_watermark", "0.4")
        await asyncio.wait_for(sending, 60)
        await eventually(lambda: worker.transport.blocked is None, what="unblocked")
        status, _ = await fetch(port, "/readyz")
        assert status == 200
        metrics = samples((await fetch(port, "/metrics"))[1])
        assert metrics[("kanin_broker_blocked", ())] == 0
        assert metrics[("kanin_broker_blocked_seconds_total", ())] > 0
        await eventually(lambda: len(handled) == 32, what="all handled")

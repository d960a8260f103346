"""Test kit: run consumer classes on the embedded broker, publish, settle, look.

    async with TestKit(ReserveInventory, ChargePayment, topology=load_topology(path)) as kit:
        await kit.publish(OrderPlaced(order_id="o-1", ...))
        await kit.settle()                      # runs until nothing is left to do
        assert kit.published("inventory.reserved")
        assert kit.dead_letters("payments.charge") == []

``settle()`` needs no sleeps: when the only messages left wait in retry queues, it moves
the broker's clock to the next expiry, so a retry policy of minutes settles in
milliseconds. Each kit has a broker of its own, so tests never see each other's messages.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from framework.consumer import Consumer
from framework.events import Event
from framework.runner import Stats
from framework.settings import Settings
from framework.topology.model import Topology
from framework.transport import Properties, embedded
from framework.transport.memory import MemoryBroker, Message
from framework.worker import Worker


@dataclass(frozen=True)
class Published:
    """A message a publisher sent (not the copies the worker moves to retry or DLQ)."""

    exchange: str
    routing_key: str
    body: bytes
    properties: Properties

    @property
    def type(self) -> str | None:
        return self.properties.message_type

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self.properties.headers or {})


class TestKit:
    """Consumer classes at work on an embedded broker of their own."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *consumers: type[Consumer],
        topology: Topology | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.url = f"memory://kit-{uuid.uuid4().hex}"
        base = settings or Settings(_env_file=None)
        self.settings = base.model_copy(update={"broker_url": self.url})
        self.broker = embedded.broker_for(self.url)
        self.worker = Worker(list(consumers), self.settings, topology=topology)
        self.sent: list[Published] = []
        self.broker.observers.append(self._observe)

    def _observe(self, exchange: str, routing_key: str, body: bytes, props: Properties) -> None:
        if "x-original-exchange" not in (props.headers or {}):  # a move keeps its origin
            self.sent.append(Published(exchange, routing_key, body, props))

    async def __aenter__(self) -> TestKit:
        await self.worker.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.worker.stop()
        await self.worker.shutdown()
        embedded.forget(self.url)

    async def publish(self, event: Event, **options: Any) -> str:
        """Publish like ``Publisher.publish``; returns the message id."""
        return await self.worker.publisher.publish(event, **options)

    async def settle(self, max_steps: int = 10_000) -> None:
        """Run until no handler runs, no consumed queue holds a message, and no message
        waits in a queue with a TTL (the clock jumps to each expiry)."""
        await settle(self.broker, [self.worker], max_steps)

    def published(self, event_type: str | None = None) -> list[Published]:
        """Messages published (by the test or by handlers), optionally of one type."""
        return [m for m in self.sent if event_type is None or m.type == event_type]

    def dead_letters(self, queue: str) -> list[Message]:
        """Messages parked in ``<queue>.dlq``."""
        dlq = self.broker.queues.get(f"{queue}.dlq")
        return list(dlq.messages) if dlq is not None else []

    def stats(self, consumer: type[Consumer]) -> Stats:
        """The counts of ``consumer`` (received, handled, retried, dead_lettered, ...)."""
        for runner in self.worker.runners:
            if runner.cls is consumer:
                return runner.stats
        raise KeyError(f"{consumer.__name__} is not running in this kit")


async def settle(broker: MemoryBroker, workers: Sequence[Worker], max_steps: int = 10_000) -> None:
    """Run ``workers`` on ``broker`` until they have nothing left to do.

    Done means: no handler runs, no message is unsettled or waits in a consumed queue,
    and no message waits in a queue with a TTL. While only such waiting messages are
    left, the broker's clock jumps to the next expiry instead of sleeping.
    """
    runners = [runner for worker in workers for runner in worker.runners]
    consumed = {runner.queue for runner in runners}
    for _ in range(max_steps):
        await asyncio.sleep(0)
        if broker.unsettled or any(runner.in_flight for runner in runners):
            await asyncio.sleep(0.001)
            continue
        if any(broker.queues[q].messages for q in consumed if q in broker.queues):
            continue
        waits = [
            q.messages[0].expires_at
            for q in broker.queues.values()
            if q.messages and q.messages[0].expires_at is not None
        ]
        if not waits:
            return
        broker.advance(max(0.0, min(waits) - broker.now()) + 0.001)
    raise AssertionError(f"not settled after {max_steps} steps")

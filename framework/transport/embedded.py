"""Workers and publishers on the embedded broker: ``KANIN_BROKER_URL=memory://``.

The same surface the worker and the publisher use on RabbitMQ (``transport/amqp.py``):
a connection whose loss the worker watches, a consumer channel that delivers
``Delivery`` objects and settles them, and a confirming publish channel. Each
``memory://<name>`` URL is one broker per process (``memory://`` is the default one),
so a worker and a publisher given the same URL talk to each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from framework.errors import BrokerError, PublishFailed, Unroutable
from framework.topology.expand import Declarations
from framework.transport.amqp import Delivery, Properties
from framework.transport.memory import MemoryBroker, MemoryBrokerError, MemoryChannel, Message

_BROKERS: dict[str, MemoryBroker] = {}


def is_memory(url: str) -> bool:
    return url.startswith("memory://")


def broker_for(url: str) -> MemoryBroker:
    """The process's embedded broker named by ``url`` (created on first use)."""
    name = url.removeprefix("memory://").strip("/")
    if name not in _BROKERS:
        _BROKERS[name] = MemoryBroker()
    return _BROKERS[name]


def forget(url: str) -> None:
    """Drop the broker named by ``url`` and everything in it."""
    _BROKERS.pop(url.removeprefix("memory://").strip("/"), None)


def declare(broker: MemoryBroker, decls: Declarations) -> None:
    """Declare exchanges, queues and bindings as ``topology apply`` does on RabbitMQ."""
    for exchange in decls.exchanges:
        broker.declare_exchange(exchange.name, exchange.type, exchange.arguments)
    for queue in decls.queues:
        broker.declare_queue(queue.name, queue.arguments)
    for b in decls.bindings:
        to_exchange = b.destination_type == "exchange"
        broker.bind(b.source, b.destination, b.routing_key, b.arguments, to_exchange=to_exchange)


class MemoryConnection:
    """Stands for a connection: closing it closes its channels and tells the watchers."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.is_closed = False
        self.close_callbacks: set[Callable[..., Any]] = set()
        self.channels: list[MemoryChannel] = []

    def channel(self) -> MemoryChannel:
        channel = self.broker.channel()
        self.channels.append(channel)
        return channel

    async def close(self) -> None:
        if self.is_closed:
            return
        self.is_closed = True
        for channel in self.channels:
            channel.close()
        for callback in list(self.close_callbacks):
            callback(self, None)


class MemoryConsumerChannel:
    """``ConsumerChannel`` on the embedded broker: one queue, prefetch, settle per tag."""

    def __init__(self, channel: MemoryChannel, queue: str, prefetch: int, counts: Any = None):
        self.channel = channel
        self.queue = queue
        self.prefetch = prefetch
        self.counts = counts
        self.acked = 0
        self._tag: str | None = None
        loop = asyncio.get_running_loop()
        self.cancelled: asyncio.Future[None] = loop.create_future()
        self.closing: asyncio.Future[None] = loop.create_future()

    async def start(self, on_delivery: Callable[[Delivery], Awaitable[None]]) -> None:
        self.channel.basic_qos(self.prefetch)

        async def consume(message: Message, tag: int) -> None:
            await on_delivery(
                Delivery.of(
                    message.body, message.properties, message.exchange, message.routing_key,
                    tag, message.redelivered, self,
                )
            )  # fmt: skip

        try:
            self._tag = self.channel.basic_consume(self.queue, consume)
        except MemoryBrokerError as exc:
            raise BrokerError(str(exc)) from None

    @property
    def is_open(self) -> bool:
        return not self.channel.is_closed and not self.cancelled.done()

    def is_settled(self, tag: int) -> bool:
        return tag not in self.channel.unacked

    def ack(self, tag: int) -> None:
        if tag in self.channel.unacked and not self.channel.is_closed:
            self.channel.basic_ack(tag)
            self.acked += 1
            if self.counts is not None:
                self.counts.acked += 1

    async def nack(self, tag: int, requeue: bool) -> None:
        if tag in self.channel.unacked and not self.channel.is_closed:
            self.channel.basic_nack(tag, requeue=requeue)

    async def cancel(self) -> None:
        if self._tag is not None:
            self.channel.basic_cancel(self._tag)

    async def drain(self) -> None:
        """Acks are sent at once here: nothing to wait for."""

    async def close(self) -> None:
        self.channel.close()
        if not self.closing.done():
            self.closing.set_result(None)


class MemoryPublishChannel:
    """``PublishChannel`` on the embedded broker: confirmed the moment it is routed."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.is_open = True

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        *,
        mandatory: bool = True,
        confirm_timeout: float | None = None,
    ) -> None:
        try:
            outcome = self.broker.publish(exchange, routing_key, body, properties, mandatory)
        except MemoryBrokerError as exc:
            raise PublishFailed(f"broker refused the message for {exchange!r}: {exc}") from None
        if outcome == "returned":
            raise Unroutable(exchange, routing_key, "NO_ROUTE")
        if outcome == "refused":
            raise PublishFailed(f"broker nacked the message for {exchange!r}")

    async def publish_batch(
        self,
        messages: list[tuple[str, str, bytes, Properties]],
        *,
        confirm_timeout: float | None = None,
    ) -> None:
        for message in messages:
            await self.publish(*message)

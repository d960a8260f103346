"""The embedded broker as a ``Transport``: ``KANIN_BROKER_URL=memory://``.

The same surface as RabbitMQ's transport (``amqp.py``): consumer channels that deliver
``Delivery`` objects and settle them, a confirming publish channel, declarations. Each
``memory://<name>`` URL is one broker per process (``memory://`` is the default one), so
workers and publishers given the same URL talk to each other. Nothing here is ever
lost or blocked: there is no network.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from framework.errors import BrokerRefused, KaninError, PublishFailed, Unroutable
from framework.settings import Settings
from framework.topology.expand import ExchangeDecl, QueueDecl
from framework.transport.base import (
    Counts,
    Declaration,
    Delivery,
    OnDelivery,
    OutgoingMessage,
    Role,
    StreamOffset,
)
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


class MemoryTransport:
    """The process's embedded broker named by the URL, as a transport."""

    def __init__(self, settings: Settings) -> None:
        self.broker = broker_for(settings.broker_url)
        self._connected = False
        self._channels: list[MemoryConsumerChannel] = []
        self._temporary: list[str] = []  # deleted with the "connection"
        self._publish = MemoryPublishChannel(self.broker)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def blocked(self) -> str | None:
        return None

    def blocked_seconds(self) -> float:
        return 0.0

    @property
    def reconnects(self) -> int:
        return 0

    async def connect(self, wait: float, role: Role = "consume") -> None:
        if role == "consume":
            self._connected = True

    async def consumer_channel(
        self,
        queue: str,
        prefetch: int,
        counts: Counts | None = None,
        offset: StreamOffset | None = None,
    ) -> MemoryConsumerChannel:
        channel = MemoryConsumerChannel(self.broker.channel(), queue, prefetch, counts, offset)
        self._channels.append(channel)
        return channel

    async def temporary_queue(self, bindings: Sequence[tuple[str, str]]) -> str:
        name = f"amq.gen-{uuid.uuid4().hex}"
        self.broker.declare_queue(name)
        self._temporary.append(name)
        try:
            for exchange, routing_key in bindings:
                self.broker.bind(exchange, name, routing_key)
        except MemoryBrokerError as exc:
            raise BrokerRefused(exc.code, str(exc)) from None
        return name

    async def publish_channel(self, within: float) -> MemoryPublishChannel:
        return self._publish

    async def declare(self, declaration: Declaration) -> None:
        d = declaration
        try:
            if isinstance(d, ExchangeDecl):
                self.broker.declare_exchange(d.name, d.type, d.arguments)
            elif isinstance(d, QueueDecl):
                self.broker.declare_queue(d.name, d.arguments)
            else:
                to_exchange = d.destination_type == "exchange"
                self.broker.bind(
                    d.source, d.destination, d.routing_key, d.arguments, to_exchange=to_exchange
                )
        except MemoryBrokerError as exc:
            raise BrokerRefused(exc.code, str(exc)) from None

    async def delete(self, declaration: Declaration, *, if_empty: bool = True) -> None:
        d = declaration
        try:
            if isinstance(d, ExchangeDecl):
                self.broker.delete_exchange(d.name)
            elif isinstance(d, QueueDecl):
                self.broker.delete_queue(d.name, if_empty=if_empty)
            else:
                to_exchange = d.destination_type == "exchange"
                self.broker.unbind(
                    d.source, d.destination, d.routing_key, d.arguments, to_exchange=to_exchange
                )
        except MemoryBrokerError as exc:
            raise BrokerRefused(exc.code, str(exc)) from None

    async def missing_queues(self, names: Sequence[str]) -> list[str]:
        return [name for name in names if name not in self.broker.queues]

    async def reader(self, queue: str) -> MemoryQueueReader:
        target = self.broker.queues.get(queue)
        if target is None:
            raise BrokerRefused(404, f"NOT_FOUND - no queue '{queue}'")
        return MemoryQueueReader(self.broker.channel(), queue, self.broker.ready(target))

    async def close(self) -> None:
        self._connected = False
        for channel in self._channels:
            await channel.close()
        self._channels = []
        for name in self._temporary:
            self.broker.delete_queue(name)
        self._temporary = []


class MemoryConsumerChannel:
    """A consumer channel on the embedded broker: one queue, prefetch, settle per tag."""

    def __init__(
        self,
        channel: MemoryChannel,
        queue: str,
        prefetch: int,
        counts: Counts | None = None,
        offset: StreamOffset | None = None,
    ) -> None:
        self.channel = channel
        self.arguments = None if offset is None else {"x-stream-offset": offset}
        self.queue = queue
        self.prefetch = prefetch
        self.counts = counts
        self.acked = 0
        self._tag: str | None = None
        loop = asyncio.get_running_loop()
        self.cancelled: asyncio.Future[None] = loop.create_future()
        self._closing: asyncio.Future[Any] = loop.create_future()

    @property
    def closing(self) -> asyncio.Future[Any]:
        return self._closing

    async def start(self, on_delivery: OnDelivery) -> None:
        self.channel.basic_qos(self.prefetch)

        async def consume(message: Message, tag: int) -> None:
            await on_delivery(
                Delivery(
                    message.body, message.properties, message.exchange, message.routing_key,
                    tag, message.redelivered, self,
                )
            )  # fmt: skip

        try:
            self._tag = self.channel.basic_consume(self.queue, consume, self.arguments)
        except MemoryBrokerError as exc:
            raise BrokerRefused(exc.code, str(exc)) from None

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
        if not self._closing.done():
            self._closing.set_result(None)


class MemoryQueueReader:
    """A queue read with ``basic.get``; what is not removed goes back in place on close."""

    def __init__(self, channel: MemoryChannel, queue: str, depth: int) -> None:
        self.channel = channel
        self.queue = queue
        self.depth = depth

    async def get(self) -> Delivery | None:
        try:
            got = self.channel.basic_get(self.queue)
        except MemoryBrokerError as exc:
            raise BrokerRefused(exc.code, str(exc)) from None
        if got is None:
            return None
        message, tag = got
        return Delivery(
            message.body, message.properties, message.exchange, message.routing_key,
            tag, message.redelivered, self,
        )  # fmt: skip

    async def remove(self, tag: int) -> None:
        self.channel.basic_ack(tag)

    def is_settled(self, tag: int) -> bool:
        return tag not in self.channel.unacked

    def ack(self, tag: int) -> None:
        self.channel.basic_ack(tag)

    async def nack(self, tag: int, requeue: bool) -> None:
        self.channel.basic_nack(tag, requeue=requeue)

    async def close(self) -> None:
        self.channel.close()


class MemoryPublishChannel:
    """A publish channel on the embedded broker: confirmed the moment it is routed."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.is_open = True

    async def publish(self, message: OutgoingMessage, *, within: float | None = None) -> None:
        exchange, routing_key, body, properties = message
        try:
            outcome = self.broker.publish(exchange, routing_key, body, properties, True)
        except MemoryBrokerError as exc:
            raise PublishFailed(exchange, routing_key, f"the broker refused it: {exc}") from None
        if outcome == "returned":
            raise Unroutable(exchange, routing_key, "NO_ROUTE")
        if outcome == "refused":
            raise PublishFailed(exchange, routing_key, "the broker nacked it")

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], *, within: float | None = None
    ) -> None:
        for message in messages:
            await self.publish(message)

    async def publish_each(
        self, messages: Sequence[OutgoingMessage], *, within: float | None = None
    ) -> list[KaninError | None]:
        errors: list[KaninError | None] = []
        for message in messages:
            try:
                await self.publish(message)
            except KaninError as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

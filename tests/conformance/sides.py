"""The same broker operations on the embedded broker and on the real RabbitMQ.

A conformance test takes a ``Side`` and runs one scenario on it; the suite runs every
scenario on both, so where the embedded broker disagrees with RabbitMQ, a test fails.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from pamqp.commands import Basic

from framework.transport.memory import MemoryBroker, MemoryChannel
from tests.conftest import AMQP_URL


@dataclass
class Got:
    """A message taken with basic.get, not yet settled."""

    body: bytes
    headers: dict[str, Any]
    routing_key: str
    redelivered: bool
    expiration: str | None
    tag: Any


class Side(Protocol):
    async def exchange(
        self, name: str, type: str, arguments: dict[str, Any] | None = None
    ) -> None: ...
    async def queue(self, name: str, arguments: dict[str, Any] | None = None) -> None: ...
    async def bind(
        self, source: str, queue: str, key: str = "", arguments: dict[str, Any] | None = None
    ) -> None: ...
    async def bind_exchange(self, source: str, destination: str, key: str = "") -> None: ...
    async def publish(
        self,
        exchange: str,
        key: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        expiration: str | None = None,
        mandatory: bool = False,
    ) -> str: ...
    async def get(self, queue: str) -> Got | None: ...
    async def ack(self, got: Got) -> None: ...
    async def reject(self, got: Got, requeue: bool) -> None: ...
    async def read(
        self, stream: str, offset: Any, count: int, within: float = 10.0
    ) -> list[tuple[int, bytes]]:
        """``count`` entries of ``stream`` from ``offset`` (x-stream-offset), as
        (offset, body), read by a consumer of its own."""
        ...

    async def reopen(self) -> None: ...
    async def close(self) -> None: ...


class MemorySide:
    def __init__(self) -> None:
        self.broker = MemoryBroker()
        self.channel: MemoryChannel = self.broker.channel()

    async def exchange(self, name: str, type: str, arguments: dict[str, Any] | None = None) -> None:
        self.broker.declare_exchange(name, type, arguments)

    async def queue(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        self.broker.declare_queue(name, arguments)

    async def bind(
        self, source: str, queue: str, key: str = "", arguments: dict[str, Any] | None = None
    ) -> None:
        self.broker.bind(source, queue, key, arguments)

    async def bind_exchange(self, source: str, destination: str, key: str = "") -> None:
        self.broker.bind(source, destination, key, to_exchange=True)

    async def publish(
        self,
        exchange: str,
        key: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        expiration: str | None = None,
        mandatory: bool = False,
    ) -> str:
        properties = Basic.Properties(headers=headers, expiration=expiration, delivery_mode=2)
        return self.broker.publish(exchange, key, body, properties, mandatory)

    async def get(self, queue: str) -> Got | None:
        await asyncio.sleep(0)
        found = self.channel.basic_get(queue)
        if found is None:
            return None
        message, tag = found
        p = message.properties
        return Got(
            message.body,
            dict(p.headers or {}),
            message.routing_key,
            message.redelivered,
            p.expiration,
            tag,
        )

    async def ack(self, got: Got) -> None:
        self.channel.basic_ack(got.tag)

    async def reject(self, got: Got, requeue: bool) -> None:
        self.channel.basic_reject(got.tag, requeue=requeue)

    async def read(
        self, stream: str, offset: Any, count: int, within: float = 10.0
    ) -> list[tuple[int, bytes]]:
        channel = self.broker.channel()
        channel.basic_qos(10)
        got: list[tuple[int, bytes]] = []

        async def take(message: Any, tag: int) -> None:
            got.append((message.headers["x-stream-offset"], message.body))
            channel.basic_ack(tag)

        channel.basic_consume(stream, take, {"x-stream-offset": offset})
        try:
            await _until(lambda: len(got) >= count, within)
        finally:
            channel.close()
        return got[:count]

    async def reopen(self) -> None:
        self.channel.close()
        self.channel = self.broker.channel()

    async def close(self) -> None:
        self.channel.close()


class RabbitSide:
    def __init__(self, connection: AbstractConnection, channel: AbstractChannel) -> None:
        self.connection = connection
        self.channel = channel

    @classmethod
    async def open(cls) -> RabbitSide:
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(connection, channel)

    async def exchange(self, name: str, type: str, arguments: dict[str, Any] | None = None) -> None:
        await self.channel.declare_exchange(name, type, durable=False, arguments=arguments)

    async def queue(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        kind = (arguments or {}).get("x-queue-type")  # quorum queues and streams: durable only
        durable = kind in ("quorum", "stream")
        await self.channel.declare_queue(name, durable=durable, arguments=arguments)

    async def bind(
        self, source: str, queue: str, key: str = "", arguments: dict[str, Any] | None = None
    ) -> None:
        q = await self.channel.get_queue(queue, ensure=False)
        await q.bind(source, key, arguments=arguments)

    async def bind_exchange(self, source: str, destination: str, key: str = "") -> None:
        target = await self.channel.get_exchange(destination, ensure=False)
        await target.bind(source, key)

    async def publish(
        self,
        exchange: str,
        key: str,
        body: bytes,
        *,
        headers: dict[str, Any] | None = None,
        expiration: str | None = None,
        mandatory: bool = False,
    ) -> str:
        target = (
            self.channel.default_exchange
            if exchange == ""
            else await self.channel.get_exchange(exchange, ensure=False)
        )
        message = aio_pika.Message(
            body, headers=headers, expiration=int(expiration) / 1000 if expiration else None
        )
        try:
            await target.publish(message, key, mandatory=mandatory)
        except aiormq.exceptions.PublishError:
            return "returned"
        except aiormq.exceptions.DeliveryError:
            return "refused"
        return "routed"

    async def get(self, queue: str) -> Got | None:
        q = await self.channel.get_queue(queue, ensure=False)
        message: AbstractIncomingMessage | None = await q.get(no_ack=False, fail=False)
        if message is None:
            return None
        return Got(
            message.body,
            dict(message.headers),
            message.routing_key or "",
            message.redelivered,
            None if message.expiration is None else str(int(message.expiration * 1000)),
            message,
        )

    async def ack(self, got: Got) -> None:
        await got.tag.ack()

    async def reject(self, got: Got, requeue: bool) -> None:
        await got.tag.reject(requeue=requeue)

    async def read(
        self, stream: str, offset: Any, count: int, within: float = 10.0
    ) -> list[tuple[int, bytes]]:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=10)
        queue = await channel.get_queue(stream, ensure=False)
        got: list[tuple[int, bytes]] = []

        async def take(message: AbstractIncomingMessage) -> None:
            got.append((int(message.headers["x-stream-offset"]), message.body))  # type: ignore[arg-type]
            await message.ack()

        await queue.consume(take, arguments={"x-stream-offset": offset})
        try:
            await _until(lambda: len(got) >= count, within)
        finally:
            await channel.close()
        return got[:count]

    async def reopen(self) -> None:
        await self.channel.close()
        self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)

    async def close(self) -> None:
        await self.connection.close()


async def _until(done: Any, within: float) -> None:
    for _ in range(int(within / 0.01)):
        if done():
            return
        await asyncio.sleep(0.01)

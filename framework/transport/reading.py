"""Reading a RabbitMQ queue one message at a time (``basic.get``): the ``QueueReader``
for tools that look at or move what a queue holds (``kanin dlq``).

Every message read stays unacknowledged on the reader's own channel until it is
removed. Closing the reader gives the rest back one by one, in the order they were read
(``basic.nack`` with requeue, oldest first), then closes the channel. A classic queue
puts each back where it was. A quorum queue puts returned messages ahead of the others,
in the order they come back, so a quorum queue read to its end and given back keeps its
order too (a reader that stopped half-way would put the messages it read behind those
returned earlier: ``framework.ops.walk`` always reads to the end).
"""

from __future__ import annotations

import asyncio
import contextlib

from aio_pika.abc import AbstractConnection
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from framework.transport.amqp_errors import CHANNEL_GONE, kanin_error
from framework.transport.base import Delivery


class AmqpQueueReader:
    """``queue`` read on a channel of its own; ``depth``: messages ready when it opened."""

    def __init__(self, channel: AbstractChannel, queue: str, depth: int, timeout: float) -> None:
        self.channel = channel
        self.queue = queue
        self.depth = depth
        self.timeout = timeout
        self._unsettled: set[int] = set()
        self._removing: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls, connection: AbstractConnection, queue: str, within: float
    ) -> AmqpQueueReader:
        try:
            opened = await connection.channel(publisher_confirms=False)
            channel = await opened.get_underlay_channel()
            ok = await channel.queue_declare(queue, passive=True, timeout=within)
        except CHANNEL_GONE as exc:
            raise kanin_error(exc) from None
        return cls(channel, queue, ok.message_count or 0, within)

    async def get(self) -> Delivery | None:
        try:
            message = await self.channel.basic_get(self.queue, no_ack=False, timeout=self.timeout)
        except CHANNEL_GONE as exc:
            raise kanin_error(exc) from None
        frame = message.delivery
        if not isinstance(frame, Basic.GetOk):
            return None
        tag = frame.delivery_tag or 0
        self._unsettled.add(tag)
        return Delivery(
            message.body, message.header.properties, frame.exchange or "",
            frame.routing_key or "", tag, bool(frame.redelivered), self,
        )  # fmt: skip

    async def remove(self, tag: int) -> None:
        try:
            await self.channel.basic_ack(tag)
        except CHANNEL_GONE as exc:
            raise kanin_error(exc) from None
        self._unsettled.discard(tag)

    # ``Settles``, so a ``Delivery`` read here can be settled like any other
    def is_settled(self, tag: int) -> bool:
        return tag not in self._unsettled

    def ack(self, tag: int) -> None:
        task = asyncio.ensure_future(self.remove(tag))
        self._removing.add(task)
        task.add_done_callback(self._removing.discard)

    async def nack(self, tag: int, requeue: bool) -> None:
        try:
            await self.channel.basic_nack(tag, requeue=requeue)
        except CHANNEL_GONE as exc:
            raise kanin_error(exc) from None
        self._unsettled.discard(tag)

    async def close(self) -> None:
        """Give back every message read and not removed, oldest first, and wait until
        the queue has them again (a quorum queue applies the returns through its log, so
        a reader opened at once could otherwise read past them)."""
        if self._removing:
            await asyncio.gather(*self._removing, return_exceptions=True)
        if self.channel.is_closed:
            return
        with contextlib.suppress(*CHANNEL_GONE):
            held = sorted(self._unsettled)
            if held:
                ready = await self._ready()
                for tag in held:
                    await self.channel.basic_nack(tag, requeue=True)
                self._unsettled.clear()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.timeout
                await self._until_ready(ready + len(held), deadline)
            await self.channel.close()

    async def _until_ready(self, count: int, deadline: float) -> None:
        """Poll the queue's ready count (no event tells of returns applied)."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            if await self._ready() >= count:
                return
            await asyncio.sleep(0.02)

    async def _ready(self) -> int:
        ok = await self.channel.queue_declare(self.queue, passive=True, timeout=self.timeout)
        return ok.message_count or 0

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
        """Give back every message read and not removed, oldest first."""
        if self._removing:
            await asyncio.gather(*self._removing, return_exceptions=True)
        if not self.channel.is_closed:
            with contextlib.suppress(*CHANNEL_GONE):
                for tag in sorted(self._unsettled):
                    await self.channel.basic_nack(tag, requeue=True)
                self._unsettled.clear()
                await self.channel.close()

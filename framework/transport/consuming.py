"""Consuming one queue on one aiormq channel, with acknowledgements coalesced.

One task per delivery (not two), no wrapper object per message, and acknowledgements
coalesced into one ``basic.ack multiple=true`` per event-loop turn for every run of
finished deliveries. Deliveries that finish behind one still running wait for it up to
``HOLD`` seconds (at most half the prefetch of them), so that one ``multiple`` ack covers
them all instead of a frame and a write each; past that, they are acked one by one.

A delivery is always settled on the channel it came from, so after a reconnect a stale
delivery tag is never acknowledged on a new channel: the broker redelivers that message
instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiormq.abc import AbstractChannel, DeliveredMessage

from framework.transport import aiormq_paths
from framework.transport.amqp_errors import CHANNEL_GONE, kanin_error
from framework.transport.base import Counts, Delivery, OnDelivery

log = logging.getLogger("kanin.transport")

HOLD = 0.05  # seconds a finished delivery's ack may wait behind one still running


class AmqpConsumerChannel:
    """One channel consuming one queue with ``prefetch`` unacked messages at most."""

    def __init__(
        self,
        channel: AbstractChannel,
        queue: str,
        prefetch: int,
        counts: Counts | None = None,
        fast: bool = True,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.channel = channel
        self.arguments = arguments  # of basic.consume (x-stream-offset)
        self.queue = queue
        self.prefetch = prefetch
        self.fast = fast  # kanin's own delivery dispatch where aiormq allows it
        self.consumer_tag: str | None = None
        self._pending: dict[int, None] = {}  # unsettled delivery tags, in delivery order
        self._done: set[int] = set()
        self._flush_scheduled = False
        self._hold: asyncio.TimerHandle | None = None  # sends the held acks when it fires
        self._sending: set[asyncio.Task[None]] = set()
        # Ack frames go out in the order they were decided: a later `multiple` ack must
        # not overtake an earlier single ack, or it would settle that tag first.
        self._send_lock = asyncio.Lock()
        self.acked = 0  # on this channel
        self.counts = counts  # anything with an ``acked`` int, counted across channels
        # Done when the broker cancels the consumer (its queue was deleted, say): the
        # channel stays open but nothing arrives any more, so the worker must know.
        self.cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.running: set[asyncio.Task[None]] = set()  # deliveries being handled (fast path)

    async def start(self, on_delivery: OnDelivery) -> None:
        def on_cancel(_frame: Any) -> None:
            if not self.cancelled.done():
                log.warning("the broker cancelled the consumer of %s", self.queue)
                self.cancelled.set_result(None)

        self.channel.on_consumer_cancel_callbacks.add(on_cancel)

        async def consume(message: DeliveredMessage) -> None:
            frame: Any = message.delivery
            tag = frame.delivery_tag
            self._pending[tag] = None
            delivery = Delivery(
                message.body, message.header.properties, frame.exchange or "",
                frame.routing_key or "", tag, bool(frame.redelivered), self,
            )  # fmt: skip
            try:
                await on_delivery(delivery)
            except Exception:  # the handler's own errors are settled in process(): a bug
                log.exception("handling a delivery of %s failed", self.queue)

        if aiormq_paths.usable(self.channel, aiormq_paths.DISPATCH_NAMES, self.fast):
            aiormq_paths.dispatch_deliveries(self.channel, self.running, self.closing)
        try:
            await self.channel.basic_qos(prefetch_count=self.prefetch)
            ok = await self.channel.basic_consume(
                self.queue, consume, no_ack=False, arguments=self.arguments
            )
        except CHANNEL_GONE as exc:
            raise kanin_error(exc) from None
        self.consumer_tag = ok.consumer_tag

    @property
    def is_open(self) -> bool:
        return not self.channel.is_closed and not self.cancelled.done()

    @property
    def closing(self) -> asyncio.Future[Any]:
        """Done when the channel closes (by us, the broker or a lost connection)."""
        closing: asyncio.Future[Any] = self.channel.closing
        return closing

    async def cancel(self) -> None:
        """Stop receiving; deliveries already here are still settled on this channel."""
        if self.consumer_tag is not None and not self.channel.is_closed:
            try:
                await self.channel.basic_cancel(self.consumer_tag, timeout=5)
            except CHANNEL_GONE:
                log.debug("cancel of %s failed: channel already gone", self.queue)

    def is_settled(self, tag: int) -> bool:
        return tag not in self._pending or tag in self._done

    def ack(self, tag: int) -> None:
        """Mark done; the ack frame goes out at the end of this event-loop turn."""
        self._done.add(tag)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def nack(self, tag: int, requeue: bool) -> None:
        """Reject now: the broker requeues it (``requeue``) or dead-letters it."""
        try:
            await self.channel.basic_nack(tag, requeue=requeue)
        except CHANNEL_GONE:
            pass  # the channel is gone: the broker requeues the message itself
        finally:
            self._pending.pop(tag, None)

    def _flush(self, force: bool = False) -> None:
        self._flush_scheduled = False
        multiple, covered = 0, 0
        for tag in self._pending:  # the longest run of finished deliveries from the oldest
            if tag not in self._done:
                break
            multiple, covered = tag, covered + 1
        for tag in list(self._pending)[:covered]:
            del self._pending[tag]
            self._done.discard(tag)
        singles: list[int] = []  # finished, but behind one still running
        if self._done and (force or len(self._done) * 2 >= self.prefetch):
            singles = sorted(self._done)
            for tag in singles:
                self._pending.pop(tag, None)
            self._done.clear()
        if not self._done and self._hold is not None:
            self._hold.cancel()
            self._hold = None
        elif self._done and self._hold is None:
            self._hold = asyncio.get_running_loop().call_later(HOLD, self._release)
        if covered or singles:
            task = asyncio.ensure_future(self._send_acks(multiple, covered, singles))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def _release(self) -> None:
        self._hold = None
        self._flush(force=True)

    async def _send_acks(self, multiple: int, covered: int, singles: list[int]) -> None:
        try:
            async with self._send_lock:
                if multiple:
                    await self.channel.basic_ack(multiple, multiple=True)
                    self._count(covered)
                for tag in singles:
                    await self.channel.basic_ack(tag)
                    self._count(1)
        except CHANNEL_GONE as exc:
            if self.arguments and "x-stream-offset" in self.arguments:
                # a stream keeps its messages: an ack there only returns credit
                log.debug("channel of stream %s closed before its acks were sent", self.queue)
                return
            log.warning(
                "channel of %s closed before its acks were sent (%s): the broker redelivers them",
                self.queue,
                exc,
            )

    def _count(self, acks: int) -> None:
        self.acked += acks
        if self.counts is not None:
            self.counts.acked += acks

    async def drain(self) -> None:
        """Send every ack that is due (held ones too), and wait until they are written."""
        if self._flush_scheduled or self._done:
            self._flush(force=True)
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        if not self.channel.is_closed:
            with contextlib.suppress(*CHANNEL_GONE):
                await self.channel.close()

"""RabbitMQ through aio-pika: connections, consuming with batched acks, confirmed publishing.

The hot paths talk to the aiormq channel under aio-pika's ``Channel`` directly: one task
per delivery (not two), no wrapper object per message, and acknowledgements coalesced
into one ``basic.ack multiple=true`` per event-loop turn for every run of finished
deliveries. Where the aiormq channel has the internals for it, kanin starts each
delivery's task itself instead of through aiormq's bookkeeping of tasks (a wrapper and
three callbacks per message), and cancels the ones still running when the channel
closes, as aiormq does. A delivery is always settled on the channel it came from, so
after a reconnect a stale delivery tag is never acknowledged on a new channel: the broker
redelivers that message instead.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractConnection
from aiormq.abc import AbstractChannel, ChannelFrame, DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from framework.errors import BrokerUnavailable, PublishFailed, Unroutable
from framework.settings import Settings

log = logging.getLogger("kanin.transport")

Properties = Basic.Properties
CONNECTION_ERRORS = (
    ConnectionError,
    OSError,
    TimeoutError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ConnectionClosed,
)


def redact(text: str, settings: Settings) -> str:
    secret = settings.broker_password.get_secret_value() if settings.broker_password else ""
    return text.replace(secret, "***") if secret else text


async def connect(settings: Settings, name: str = "kanin") -> AbstractConnection:
    """A connection within ``connect_timeout``, or ``BrokerUnavailable`` naming the URL."""
    try:
        return await aio_pika.connect(
            settings.amqp_url(),
            timeout=settings.connect_timeout,
            client_properties={"connection_name": name},
        )
    except (TimeoutError, aiormq.exceptions.AMQPError, OSError) as exc:
        reason = redact(str(exc) or type(exc).__name__, settings)
        raise BrokerUnavailable(f"cannot connect to {settings.broker_url}: {reason}") from None


async def raw_channel(connection: AbstractConnection, confirms: bool = False) -> AbstractChannel:
    channel = await connection.channel(publisher_confirms=confirms, on_return_raises=confirms)
    return await channel.get_underlay_channel()


class Delivery:
    """One message as received, bound to the channel that must settle it."""

    __slots__ = (
        "body",
        "channel",
        "delivery_tag",
        "exchange",
        "properties",
        "redelivered",
        "routing_key",
    )

    def __init__(self, message: DeliveredMessage, channel: ConsumerChannel) -> None:
        frame = message.delivery
        self.body: bytes = message.body
        self.properties: Properties = message.header.properties
        self.exchange: str = frame.exchange or ""  # type: ignore[union-attr]
        self.routing_key: str = frame.routing_key or ""  # type: ignore[union-attr]
        self.delivery_tag: int = frame.delivery_tag or 0  # type: ignore[union-attr]
        self.redelivered: bool = bool(frame.redelivered)  # type: ignore[union-attr]
        self.channel = channel

    @classmethod
    def of(
        cls,
        body: bytes,
        properties: Properties,
        exchange: str,
        routing_key: str,
        delivery_tag: int,
        redelivered: bool,
        channel: Any,
    ) -> Delivery:
        """A delivery from another transport (the embedded broker), settled by ``channel``."""
        delivery = cls.__new__(cls)
        delivery.body, delivery.properties = body, properties
        delivery.exchange, delivery.routing_key = exchange, routing_key
        delivery.delivery_tag, delivery.redelivered = delivery_tag, redelivered
        delivery.channel = channel
        return delivery

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}


# What starting delivery tasks without aiormq's task store takes from its channel.
_DISPATCH_INTERNALS = ("_on_deliver_frame", "_get_frame", "_read_content", "consumers")


class ConsumerChannel:
    """One channel consuming one queue with ``prefetch`` unacked messages at most."""

    def __init__(
        self, channel: AbstractChannel, queue: str, prefetch: int, counts: Any = None
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.prefetch = prefetch
        self.consumer_tag: str | None = None
        self._pending: dict[int, None] = {}  # unsettled delivery tags, in delivery order
        self._done: set[int] = set()
        self._flush_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        # Ack frames go out in the order they were decided: a later `multiple` ack must
        # not overtake an earlier single ack, or it would settle that tag first.
        self._send_lock = asyncio.Lock()
        self.acked = 0  # on this channel
        self.counts = counts  # anything with an ``acked`` int, counted across channels
        # Done when the broker cancels the consumer (its queue was deleted, say): the
        # channel stays open but nothing arrives any more, so the worker must know.
        self.cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running: set[asyncio.Task[None]] = set()  # deliveries being handled

    async def start(self, on_delivery: Callable[[Delivery], Awaitable[None]]) -> None:
        def on_cancel(_frame: Any) -> None:
            if not self.cancelled.done():
                log.warning("the broker cancelled the consumer of %s", self.queue)
                self.cancelled.set_result(None)

        callbacks: set[Any] = getattr(self.channel, "on_consumer_cancel_callbacks", set())
        callbacks.add(on_cancel)
        await self.channel.basic_qos(prefetch_count=self.prefetch)

        async def consume(message: DeliveredMessage) -> None:
            delivery = Delivery(message, self)
            self._pending[delivery.delivery_tag] = None
            try:
                await on_delivery(delivery)
            except Exception:  # the handler's own errors are settled in process(): a bug
                log.exception("handling a delivery of %s failed", self.queue)

        if all(hasattr(self.channel, name) for name in _DISPATCH_INTERNALS):
            self._dispatch_deliveries()
        ok = await self.channel.basic_consume(self.queue, consume, no_ack=False)
        self.consumer_tag = ok.consumer_tag

    def _dispatch_deliveries(self) -> None:
        """Start each delivery's task here rather than through aiormq's task store: the
        same frames read the same way, the same consumer called, one callback per task
        (needs aiormq >= 7.2.1, whose channel reader looks the method up per delivery).
        Tasks still running when the channel closes are cancelled, as aiormq does."""
        ch: Any = self.channel
        loop = asyncio.get_running_loop()
        running = self._running

        async def on_deliver_frame(frame: Basic.Deliver) -> None:
            header = await ch._get_frame()
            if not isinstance(header, ContentHeader):
                raise ValueError(f"unexpected frame {header!r} instead of a content header")
            message = await ch._read_content(frame, header)
            consumer = ch.consumers.get(frame.consumer_tag)
            if consumer is None:  # cancelled meanwhile: unacked, it is requeued at close
                return
            task = loop.create_task(consumer(message))
            running.add(task)
            task.add_done_callback(running.discard)

        def on_close(_: object) -> None:
            for task in list(running):
                task.cancel()

        ch._on_deliver_frame = on_deliver_frame  # the channel's reader calls it per delivery
        self.closing.add_done_callback(on_close)

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
            except (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError):
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
        except CONNECTION_ERRORS:
            pass  # the channel is gone: the broker requeues the message itself
        finally:
            self._pending.pop(tag, None)

    def _flush(self) -> None:
        self._flush_scheduled = False
        multiple, covered = 0, 0
        for tag in self._pending:  # the longest run of finished deliveries from the oldest
            if tag not in self._done:
                break
            multiple, covered = tag, covered + 1
        for tag in list(self._pending)[:covered]:
            del self._pending[tag]
            self._done.discard(tag)
        singles = sorted(self._done)  # finished, but behind one still running
        for tag in singles:
            self._pending.pop(tag, None)
        self._done.clear()
        if covered or singles:
            task = asyncio.ensure_future(self._send_acks(multiple, covered, singles))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send_acks(self, multiple: int, covered: int, singles: list[int]) -> None:
        try:
            async with self._send_lock:
                if multiple:
                    await self.channel.basic_ack(multiple, multiple=True)
                    self._count(covered)
                for tag in singles:
                    await self.channel.basic_ack(tag)
                    self._count(1)
        except CONNECTION_ERRORS as exc:
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
        """Send every ack that is due, and wait until they are written."""
        if self._flush_scheduled:
            self._flush()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        if not self.channel.is_closed:
            try:
                await self.channel.close()
            except (*CONNECTION_ERRORS, aiormq.exceptions.AMQPError):
                pass


OutgoingMessage = tuple[str, str, bytes, Properties]  # exchange, routing key, body, properties
_BATCH_INTERNALS = (
    "lock", "delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue",
    "create_future", "number", "_split_body",
)  # fmt: skip


class PublishChannel:
    """A channel in confirm mode: every publish returns once the broker has taken it."""

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self.batchable = all(hasattr(channel, name) for name in _BATCH_INTERNALS)

    @property
    def is_open(self) -> bool:
        return not self.channel.is_closed

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
            result = await self.channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=mandatory,
                timeout=confirm_timeout,
            )
        except Exception as exc:
            raise _publish_error(exc, exchange, routing_key) from None
        if isinstance(result, Basic.Nack):
            raise PublishFailed(f"broker nacked the message for {exchange!r}")

    async def publish_batch(
        self, messages: list[OutgoingMessage], *, confirm_timeout: float | None = None
    ) -> None:
        """Publish all ``messages`` in one write, then wait for every confirm.

        One frame buffer and one socket write for the whole batch, instead of a task, a
        lock round and a write per message. Falls back to one publish per message when
        the AMQP client lacks what this needs.
        """
        if not self.batchable:
            await asyncio.gather(
                *(self.publish(*m, confirm_timeout=confirm_timeout) for m in messages)
            )
            return
        ch: Any = self.channel
        confirms: list[asyncio.Future[Any]] = []
        frames: list[Any] = []
        async with asyncio.timeout(confirm_timeout):
            async with ch.lock:
                for exchange, routing_key, body, properties in messages:
                    if not properties.message_id:  # returns are matched by message id
                        properties.message_id = uuid.uuid4().hex
                    ch.delivery_tag += 1
                    confirm = ch.create_future()
                    ch.confirmations[ch.delivery_tag] = confirm
                    ch.message_id_delivery_tag[properties.message_id] = ch.delivery_tag
                    confirm.add_done_callback(
                        _forget(ch, str(properties.message_id), ch.delivery_tag)
                    )
                    confirms.append(confirm)
                    frames.append(
                        Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
                    )
                    frames.append(ContentHeader(properties=properties, body_size=len(body)))
                    frames.extend(ch._split_body(body))
                await ch.write_queue.put(
                    ChannelFrame.marshall(channel_number=ch.number, frames=frames)
                )
            results = await asyncio.gather(*confirms, return_exceptions=True)
        for (exchange, routing_key, _, _), result in zip(messages, results, strict=True):
            if isinstance(result, BaseException):
                raise _publish_error(result, exchange, routing_key)
            if isinstance(result, Basic.Nack):
                raise PublishFailed(f"broker nacked a message for {exchange!r}")


def _forget(ch: Any, message_id: str, tag: int) -> Callable[[asyncio.Future[Any]], None]:
    def forget(_: asyncio.Future[Any]) -> None:
        if ch.message_id_delivery_tag.get(message_id) == tag:
            del ch.message_id_delivery_tag[message_id]

    return forget


def _publish_error(exc: BaseException, exchange: str, routing_key: str) -> BaseException:
    """kanin's error for a failed publish; connection trouble is passed on as it is."""
    if isinstance(exc, aiormq.exceptions.PublishError):
        reply = getattr(exc.frame, "reply_text", None) or "NO_ROUTE"
        return Unroutable(exchange, routing_key, str(reply))
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return PublishFailed(f"broker refused the message for {exchange!r}: {exc}")
    if isinstance(exc, aiormq.exceptions.ChannelNotFoundEntity):
        return PublishFailed(str(exc.args[0] if exc.args else exc))
    return exc

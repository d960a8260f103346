"""RabbitMQ through aio-pika: the ``Transport`` for ``amqp://`` and ``amqps://`` URLs.

Two connections per transport, each a ``Link`` that comes back by itself: one to consume
on, one to publish on (opened when first needed), so a broker that blocks publishing
(a memory or disk alarm) never stalls the acknowledgements of the messages being
consumed. Every error of aio-pika or aiormq is turned into one of kanin's here.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import aiormq.exceptions
from aio_pika.abc import AbstractChannel as PikaChannel
from aiormq.abc import AbstractChannel
from pamqp.commands import Basic

from framework import tls
from framework.errors import BrokerUnavailable, KaninError, PublishFailed, Unroutable
from framework.settings import Settings
from framework.topology.expand import ExchangeDecl, QueueDecl
from framework.transport import aiormq_paths
from framework.transport.amqp_errors import CHANNEL_GONE, kanin_error, reason, refusal
from framework.transport.base import Counts, Declaration, OutgoingMessage, Role, StreamOffset
from framework.transport.consuming import AmqpConsumerChannel
from framework.transport.link import Link
from framework.transport.reading import AmqpQueueReader


class AmqpTransport:
    """RabbitMQ: a consuming and a publishing connection to the hosts of the URL."""

    def __init__(self, settings: Settings, name: str, publish_name: str | None = None) -> None:
        self.settings = settings
        order = list(range(len(settings.broker_hosts)))
        random.shuffle(order)  # one order per process: workers spread over the nodes
        tls.warn_if_unverified(settings)  # for the broker, its management API and Redis
        context = None
        if settings.broker_url.startswith("amqps://"):
            context = tls.client_context(settings)
        self.consuming = Link(settings, name, order, context)
        self.publishing = Link(settings, publish_name or f"{name}-publish", order, context)
        self.fast = settings.fast_paths
        self._publish: AmqpPublishChannel | None = None
        self._publish_lock = asyncio.Lock()
        self._declaring: PikaChannel | None = None

    @property
    def connected(self) -> bool:
        return self.consuming.is_up

    @property
    def blocked(self) -> str | None:
        return self.publishing.blocked or self.consuming.blocked

    def blocked_seconds(self) -> float:
        return self.publishing.blocked_seconds() + self.consuming.blocked_seconds()

    @property
    def reconnects(self) -> int:
        return self.consuming.reconnects + self.publishing.reconnects

    async def connect(self, wait: float, role: Role = "consume") -> None:
        await (self.consuming if role == "consume" else self.publishing).open(wait)

    async def consumer_channel(
        self,
        queue: str,
        prefetch: int,
        counts: Counts | None = None,
        offset: StreamOffset | None = None,
    ) -> AmqpConsumerChannel:
        connection = await self.consuming.get(self.settings.connect_timeout)
        try:
            channel = await connection.channel(publisher_confirms=False)
            underlay = await channel.get_underlay_channel()
        except CHANNEL_GONE as exc:
            raise kanin_error(exc, self.settings) from None
        arguments = None if offset is None else {"x-stream-offset": offset}
        return AmqpConsumerChannel(underlay, queue, prefetch, counts, self.fast, arguments)

    async def temporary_queue(self, bindings: Sequence[tuple[str, str]]) -> str:
        channel = await self._declare_channel()
        timeout = self.settings.connect_timeout
        try:
            queue = await channel.declare_queue(exclusive=True, auto_delete=True, timeout=timeout)
            for exchange, routing_key in bindings:
                await queue.bind(exchange, routing_key, timeout=timeout)
        except CHANNEL_GONE as exc:
            self._declaring = None
            raise kanin_error(exc, self.settings) from None
        return queue.name

    async def publish_channel(self, within: float) -> AmqpPublishChannel:
        channel = self._publish
        if channel is not None and channel.is_open:
            return channel
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        try:
            async with asyncio.timeout(within):
                async with self._publish_lock:
                    if self._publish is not None and self._publish.is_open:
                        return self._publish
                    connection = await self.publishing.get(deadline - loop.time())
                    try:
                        opened = await connection.channel(
                            publisher_confirms=True, on_return_raises=True
                        )
                        underlay = await opened.get_underlay_channel()
                    except CHANNEL_GONE as exc:
                        # a connection that cannot open a channel is gone, whatever it says
                        self.publishing.lost(reason(exc, self.settings))
                        raise kanin_error(exc, self.settings) from None
                    self._publish = AmqpPublishChannel(underlay, self.fast)
                    return self._publish
        except TimeoutError:
            raise BrokerUnavailable(self.publishing.last_error) from None

    async def declare(self, declaration: Declaration) -> None:
        channel = await self._declare_channel()
        timeout = self.settings.connect_timeout
        d = declaration
        try:
            if isinstance(d, ExchangeDecl):
                await channel.declare_exchange(
                    d.name, d.type, durable=d.durable, auto_delete=d.auto_delete,
                    internal=d.internal, arguments=d.arguments, timeout=timeout,
                )  # fmt: skip
            elif isinstance(d, QueueDecl):
                await channel.declare_queue(
                    d.name, durable=d.durable, auto_delete=d.auto_delete,
                    arguments=d.arguments, timeout=timeout,
                )  # fmt: skip
            elif d.destination_type == "queue":
                queue = await channel.get_queue(d.destination, ensure=False)
                await queue.bind(d.source, d.routing_key, arguments=d.arguments, timeout=timeout)
            else:
                target = await channel.get_exchange(d.destination, ensure=False)
                await target.bind(d.source, d.routing_key, arguments=d.arguments, timeout=timeout)
        except CHANNEL_GONE as exc:
            self._declaring = None
            raise kanin_error(exc, self.settings) from None

    async def delete(self, declaration: Declaration, *, if_empty: bool = True) -> None:
        channel = await self._declare_channel()
        timeout = self.settings.connect_timeout
        d = declaration
        try:
            if isinstance(d, ExchangeDecl):
                await channel.exchange_delete(d.name, timeout=timeout)
            elif isinstance(d, QueueDecl):
                await channel.queue_delete(d.name, if_empty=if_empty, timeout=timeout)
            elif d.destination_type == "queue":
                queue = await channel.get_queue(d.destination, ensure=False)
                await queue.unbind(d.source, d.routing_key, arguments=d.arguments, timeout=timeout)
            else:
                target = await channel.get_exchange(d.destination, ensure=False)
                await target.unbind(d.source, d.routing_key, arguments=d.arguments, timeout=timeout)
        except CHANNEL_GONE as exc:
            self._declaring = None
            raise kanin_error(exc, self.settings) from None

    async def _declare_channel(self) -> PikaChannel:
        if self._declaring is None or self._declaring.is_closed:
            connection = await self.consuming.get(self.settings.connect_timeout)
            try:
                self._declaring = await connection.channel(publisher_confirms=False)
            except CHANNEL_GONE as exc:
                raise kanin_error(exc, self.settings) from None
        return self._declaring

    async def missing_queues(self, names: Sequence[str]) -> list[str]:
        missing = []
        for name in names:
            channel = await self._declare_channel()
            try:
                await channel.declare_queue(
                    name, passive=True, timeout=self.settings.connect_timeout
                )
            except CHANNEL_GONE as exc:
                self._declaring = None
                refused = refusal(exc)
                if refused is None or refused.code != 404:
                    raise kanin_error(exc, self.settings) from None
                missing.append(name)
        return missing

    async def reader(self, queue: str) -> AmqpQueueReader:
        timeout = self.settings.connect_timeout
        connection = await self.consuming.get(timeout)
        return await AmqpQueueReader.open(connection, queue, timeout)

    async def close(self) -> None:
        await self.publishing.close()
        await self.consuming.close()


class AmqpPublishChannel:
    """A channel in confirm mode: every publish is mandatory and returns once confirmed."""

    def __init__(self, channel: AbstractChannel, fast: bool = True) -> None:
        self.channel = channel
        self.batch_in_one_write = aiormq_paths.usable(channel, aiormq_paths.BATCH_NAMES, fast)

    @property
    def is_open(self) -> bool:
        return not self.channel.is_closed

    async def publish(self, message: OutgoingMessage, *, within: float | None = None) -> None:
        exchange, routing_key, body, properties = message
        try:
            result = await self.channel.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                timeout=within,
            )
        except Exception as exc:
            raise _publish_error(exc, message, within) from None
        if isinstance(result, Basic.Nack):
            raise PublishFailed(exchange, routing_key, "the broker nacked it")

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], *, within: float | None = None
    ) -> None:
        """Publish all ``messages``, then wait for every confirm; the first failure raises."""
        for error in await self.publish_each(messages, within=within):
            if error is not None:
                raise error

    async def publish_each(
        self, messages: Sequence[OutgoingMessage], *, within: float | None = None
    ) -> list[KaninError | None]:
        """Publish all ``messages``, then wait for every confirm: in one write where aiormq
        allows it, else pipelined through its public ``basic_publish``. Each message's
        error, or None once confirmed."""
        if not self.batch_in_one_write:
            results = await asyncio.gather(
                *(self.publish(m, within=within) for m in messages), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, KaninError):
                    raise result
            return [r if isinstance(r, KaninError) else None for r in results]
        try:
            async with asyncio.timeout(within):
                confirms = await aiormq_paths.publish_batch(self.channel, messages)
        except Exception as exc:
            raise _publish_error(exc, messages[0], within) from None
        errors: list[KaninError | None] = []
        for message, result in zip(messages, confirms, strict=True):
            if isinstance(result, BaseException):
                errors.append(_publish_error(result, message, within))
            elif isinstance(result, Basic.Nack):
                errors.append(PublishFailed(message[0], message[1], "the broker nacked it"))
            else:
                errors.append(None)
        return errors


def _publish_error(
    exc: BaseException, message: OutgoingMessage, within: float | None
) -> KaninError:
    """kanin's error for a failed publish: ``BrokerUnavailable`` when the connection went
    away (worth sending again on a new one), else what the broker said."""
    exchange, routing_key = message[0], message[1]
    if isinstance(exc, aiormq.exceptions.PublishError):
        reply = getattr(exc.frame, "reply_text", None) or "NO_ROUTE"
        return Unroutable(exchange, routing_key, str(reply))
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        if isinstance(exc.frame, Basic.Nack):
            return PublishFailed(exchange, routing_key, "the broker nacked it")
        return PublishFailed(exchange, routing_key, f"the broker refused it: {exc}")
    refused = refusal(exc)
    if refused is not None:
        return PublishFailed(exchange, routing_key, f"the broker refused it: {refused.reply}")
    if isinstance(exc, TimeoutError):
        bound = f" within {within:g}s" if within is not None else ""
        return PublishFailed(exchange, routing_key, f"no confirm from the broker{bound}")
    return BrokerUnavailable(reason(exc))

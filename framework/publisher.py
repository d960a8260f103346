"""Publishing events: confirmed, mandatory, persistent, with the kanin envelope.

Every publish waits for the broker's confirm. A message no binding routes comes back and
raises ``Unroutable``; a nack or a refusal raises ``PublishFailed``. While the connection
is down, a publish waits for it to come back and is sent again, with the same
``message_id`` and headers, all within ``KANIN_PUBLISH_TIMEOUT`` seconds in total; then
``PublishFailed`` names the exchange, the routing key and the cause. A publish never
hangs, and no client library's exception reaches the caller. ``publish_many`` sends a
batch and waits for all confirms together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import TracerProvider

from framework.errors import BrokerUnavailable, KaninError, PublishFailed, Unroutable
from framework.events import Event, new_message_id
from framework.histogram import Histogram
from framework.settings import Settings
from framework.tracing import Tracing
from framework.transport import OutgoingMessage, Properties, Transport, open_transport

log = logging.getLogger("kanin.publisher")
MAX_PAUSE = 1.0  # seconds between two tries of a publish while the connection is down


def envelope(event: Event, **fields: Any) -> Properties:
    """AMQP properties and headers of a fresh publish of ``event`` (the wire contract)."""
    return envelope_for(event.event_type or None, event.event_version, **fields)


def envelope_for(
    event_type: str | None,
    version: int | None,
    *,
    app_id: str,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    idempotency_key: str | None = None,
    headers: Mapping[str, Any] | None = None,
    persistent: bool = True,
) -> Properties:
    """The envelope for a body of ``event_type`` (``None`` for an untyped message)."""
    message_id = new_message_id()
    all_headers: dict[str, Any] = {"x-attempt": 1}
    if version is not None:
        all_headers["x-event-version"] = version
    if causation_id:
        all_headers["x-causation-id"] = causation_id
    if idempotency_key:
        all_headers["x-idempotency-key"] = idempotency_key
    if headers:
        all_headers.update(headers)
    return Properties(
        content_type="application/json",
        delivery_mode=2 if persistent else 1,
        message_id=message_id,
        message_type=event_type,
        timestamp=datetime.now(UTC),
        app_id=app_id,
        correlation_id=correlation_id or message_id,
        headers=all_headers,
    )


def prepared(
    event: Event,
    settings: Settings,
    *,
    exchange: str | None = None,
    routing_key: str | None = None,
    correlation_id: str | None = None,
    causation_id: str | None = None,
    idempotency_key: str | None = None,
    headers: Mapping[str, Any] | None = None,
    persistent: bool = True,
) -> OutgoingMessage:
    """What a publish of ``event`` sends: to ``exchange``, else the event class's
    ``exchange=``, else ``KANIN_EXCHANGE``; with ``routing_key``, else the event's type;
    its JSON body and its envelope."""
    if exchange is None:
        exchange = event.event_exchange if event.event_exchange is not None else settings.exchange
    properties = envelope(
        event, app_id=settings.service_name, correlation_id=correlation_id,
        causation_id=causation_id, idempotency_key=idempotency_key, headers=headers,
        persistent=persistent,
    )  # fmt: skip
    key = event.event_type if routing_key is None else routing_key
    return exchange, key, event.to_json(), properties


class Publisher:
    """Publishes events to the broker. Use ``async with Publisher(settings) as publisher``.

    Without ``transport`` it opens a connection of its own (named
    ``<service>-publisher``); a worker's publisher shares the worker's transport and
    publishes on its publishing connection.
    """

    def __init__(
        self,
        settings: Settings,
        transport: Transport | None = None,
        tracer_provider: TracerProvider | None = None,
        *,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        # the given tracing, else the given provider, else the application's global SDK
        # one, else no spans
        self.tracing = tracing or Tracing.default(tracer_provider, fast=settings.fast_paths)
        self.published: dict[str, int] = {}  # confirmed, by exchange
        self.failures: dict[str, int] = {}  # unroutable, refused or timed out, by exchange
        self.confirm_latency = Histogram()
        self._owns_transport = transport is None
        if transport is None:
            name = f"{settings.service_name}-publisher"
            transport = open_transport(settings, name, publish_name=name)
        self.transport = transport

    async def __aenter__(self) -> Publisher:
        try:  # fail early if no host of the broker answers
            await self.transport.connect(0, role="publish")
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_transport:
            await self.transport.close()

    async def publish(
        self,
        event: Event,
        *,
        exchange: str | None = None,
        routing_key: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, Any] | None = None,
        persistent: bool = True,
    ) -> str:
        """Publish ``event``; return its ``message_id`` once the broker confirmed it.

        The routing key defaults to the event's type; the exchange to the event class's
        ``exchange=``, else ``KANIN_EXCHANGE`` (default: the default exchange).
        """
        message = prepared(
            event, self.settings, exchange=exchange, routing_key=routing_key,
            correlation_id=correlation_id, causation_id=causation_id,
            idempotency_key=idempotency_key, headers=headers, persistent=persistent,
        )  # fmt: skip
        target, key, body, properties = message
        with self.tracing.send(target, key, properties, len(body)):
            await self._send([message], batch=False)
        return str(properties.message_id)

    async def publish_many(
        self,
        events: Iterable[Event],
        *,
        exchange: str | None = None,
        routing_key: str | None = None,
        persistent: bool = True,
    ) -> list[str]:
        """Publish a batch with pipelined confirms; return the message ids in order.

        All messages go out before the first confirm is awaited. If the connection is
        lost before every confirm came, the whole batch is sent again on the next
        connection with the same message ids, so consumers deduplicate what arrived twice.
        """
        settings = self.settings
        messages = [
            prepared(e, settings, exchange=exchange, routing_key=routing_key, persistent=persistent)
            for e in events
        ]
        if not messages:
            return []
        with ExitStack() as spans:
            if self.tracing.enabled:  # one send span per message, open until its confirm
                for ex, key, body, p in messages:
                    spans.enter_context(self.tracing.send(ex, key, p, len(body)))
            await self._send(messages, batch=True)
        return [str(p.message_id) for *_, p in messages]

    async def publish_raw(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties
    ) -> None:
        """Publish bytes as they are, confirmed; sent again with the same properties while
        the connection comes back, all within ``KANIN_PUBLISH_TIMEOUT``."""
        await self._send([(exchange, routing_key, body, properties)], batch=False)

    async def publish_raw_each(
        self, messages: Sequence[OutgoingMessage]
    ) -> list[KaninError | None]:
        """Publish bytes as they are, all in one go, and wait for every confirm; each
        message's error (``BrokerUnavailable`` when the connection went), or None once
        confirmed. Nothing is sent again: the caller decides (the outbox relay does)."""
        timeout = self.settings.publish_timeout
        try:
            channel = await self.transport.publish_channel(timeout)
            errors = await channel.publish_each(messages, within=timeout)
        except KaninError as exc:
            errors = [exc] * len(messages)
        for message, error in zip(messages, errors, strict=True):
            if error is None:
                self.published[message[0]] = self.published.get(message[0], 0) + 1
            else:
                self.failures[message[0]] = self.failures.get(message[0], 0) + 1
        return errors

    async def _send(self, messages: Sequence[OutgoingMessage], batch: bool) -> None:
        """One logical publish of ``messages``: tried until confirmed, refused, or out of time."""
        timeout = self.settings.publish_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pause = 0.05
        exchange, routing_key = messages[0][0], messages[0][1]
        waited = False
        while True:
            started = time.perf_counter()
            try:
                channel = await self.transport.publish_channel(max(0.0, deadline - loop.time()))
                left = max(0.001, deadline - loop.time())
                if batch:
                    await channel.publish_batch(messages, within=left)
                else:
                    await channel.publish(messages[0], within=left)
            except BrokerUnavailable as exc:
                if loop.time() + pause >= deadline:
                    self._failed(messages)
                    raise PublishFailed(
                        exchange, routing_key, f"no connection within {timeout:g}s (last: {exc})"
                    ) from None
                if not waited:  # the connection's loss itself is logged once, as a warning
                    log.debug("publish to %r waits for the connection (%s)", exchange, exc)
                    waited = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, MAX_PAUSE)
                continue
            except (Unroutable, PublishFailed) as exc:
                self._failed(messages)
                if isinstance(exc, PublishFailed) and self.transport.blocked:
                    raise PublishFailed(
                        exc.exchange,
                        exc.routing_key,
                        f"{exc.cause} (the broker blocks publishing: {self.transport.blocked})",
                    ) from None
                raise
            except KaninError as exc:  # refused otherwise (access to the vhost, say)
                self._failed(messages)
                raise PublishFailed(exchange, routing_key, str(exc)) from None
            self._confirmed(messages, time.perf_counter() - started)
            return

    def _confirmed(self, messages: Sequence[OutgoingMessage], took: float) -> None:
        for exchange, *_ in messages:
            self.published[exchange] = self.published.get(exchange, 0) + 1
            self.confirm_latency.observe(took)

    def _failed(self, messages: Sequence[OutgoingMessage]) -> None:
        for exchange, *_ in messages:
            self.failures[exchange] = self.failures.get(exchange, 0) + 1

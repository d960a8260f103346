"""Publishing events: confirmed, mandatory, persistent, with the kanin envelope.

Every publish waits for the broker's confirm. A message no binding routes comes back and
raises ``Unroutable``; a nack raises ``PublishFailed``. Lost connections are retried
(tenacity) for at most ``publish_timeout`` seconds, then ``PublishFailed``: a publish
never hangs. ``publish_many`` sends a batch and waits for all confirms together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from datetime import UTC, datetime
from typing import Any, Protocol

from opentelemetry.trace import TracerProvider
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from framework.errors import BrokerUnavailable, PublishFailed
from framework.events import Event, new_message_id
from framework.metrics import Histogram
from framework.settings import Settings
from framework.tracing import Tracing
from framework.transport.amqp import (
    CONNECTION_ERRORS,
    Properties,
    PublishChannel,
    connect,
    raw_channel,
)
from framework.transport.embedded import MemoryPublishChannel, broker_for, is_memory

log = logging.getLogger("kanin.publisher")


class ChannelSource(Protocol):
    async def publish_channel(self) -> PublishChannel | MemoryPublishChannel: ...


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


class _OwnConnection:
    """The publisher's own connection, opened on first use and reopened after a loss."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.connection: Any = None
        self.channel: PublishChannel | MemoryPublishChannel | None = None
        self.lock = asyncio.Lock()

    async def publish_channel(self) -> PublishChannel | MemoryPublishChannel:
        if self.channel is not None and self.channel.is_open:
            return self.channel
        if is_memory(self.settings.broker_url):
            self.channel = MemoryPublishChannel(broker_for(self.settings.broker_url))
            return self.channel
        async with self.lock:
            if self.channel is not None and self.channel.is_open:
                return self.channel
            if self.connection is None or self.connection.is_closed:
                self.connection = await connect(
                    self.settings, f"{self.settings.service_name}-publisher"
                )
            self.channel = PublishChannel(await raw_channel(self.connection, confirms=True))
            return self.channel

    async def close(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            await self.connection.close()


class Publisher:
    """Publishes events to RabbitMQ. Use ``async with Publisher(settings) as publisher``."""

    def __init__(
        self,
        settings: Settings,
        source: ChannelSource | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        # the given provider, else the application's global SDK one, else no spans
        self.tracing = Tracing.default(tracer_provider)
        self.published: dict[str, int] = {}  # confirmed, by exchange
        self.failures: dict[str, int] = {}  # unroutable, nacked or timed out, by exchange
        self.confirm_latency = Histogram()
        self._own = _OwnConnection(settings) if source is None else None
        self._source: ChannelSource = source if source is not None else self._own  # type: ignore[assignment]

    async def __aenter__(self) -> Publisher:
        await self._source.publish_channel()  # fail early if the broker is unreachable
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own is not None:
            await self._own.close()

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
        properties = envelope(
            event,
            app_id=self.settings.service_name,
            correlation_id=correlation_id,
            causation_id=causation_id,
            idempotency_key=idempotency_key,
            headers=headers,
            persistent=persistent,
        )
        key = event.event_type if routing_key is None else routing_key
        target, body = self._target(event, exchange), event.to_json()
        with self.tracing.send(target, key, properties, len(body)):
            await self.publish_raw(target, key, body, properties)
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

        All messages go out before the first confirm is awaited. If the connection fails
        mid-batch, the batch is sent again message by message (with the usual retries),
        so a message may arrive twice: consumers deduplicate by idempotency key.
        """
        app_id = self.settings.service_name
        batch = [
            (
                event,
                envelope(event, app_id=app_id, persistent=persistent),
                event.to_json(),
            )
            for event in events
        ]
        timeout = self.settings.publish_timeout

        def target(event: Event) -> tuple[str, str]:
            return self._target(event, exchange), (
                event.event_type if routing_key is None else routing_key
            )

        messages = [(*target(e), body, p) for e, p, body in batch]
        with ExitStack() as spans:
            if self.tracing.enabled:  # one send span per message, open until its confirm
                for ex, key, body, p in messages:
                    spans.enter_context(self.tracing.send(ex, key, p, len(body)))
            try:
                channel = await self._source.publish_channel()
                started = time.perf_counter()
                await channel.publish_batch(messages, confirm_timeout=timeout)
                self._confirmed(messages, time.perf_counter() - started)
            except (*CONNECTION_ERRORS, BrokerUnavailable) as exc:
                log.warning("batch publish failed (%s); sending it again one by one", exc)
                for message in messages:
                    await self.publish_raw(*message)
            except Exception:
                self._failed(messages)
                raise
        return [str(p.message_id) for _, p, _ in batch]

    def _confirmed(self, messages: list[tuple[str, str, bytes, Properties]], took: float) -> None:
        for exchange, *_ in messages:
            self.published[exchange] = self.published.get(exchange, 0) + 1
            self.confirm_latency.observe(took)

    def _failed(self, messages: list[tuple[str, str, bytes, Properties]]) -> None:
        for exchange, *_ in messages:
            self.failures[exchange] = self.failures.get(exchange, 0) + 1

    def _target(self, event: Event, exchange: str | None) -> str:
        if exchange is not None:
            return exchange
        if event.event_exchange is not None:
            return event.event_exchange
        return self.settings.exchange

    async def publish_raw(
        self, exchange: str, routing_key: str, body: bytes, properties: Properties
    ) -> None:
        """Publish bytes as they are; retried while the connection is down, within the bound."""

        async def once() -> None:
            channel = await self._source.publish_channel()
            timeout = self.settings.publish_timeout
            started = time.perf_counter()
            await channel.publish(exchange, routing_key, body, properties, confirm_timeout=timeout)
            self._confirmed([message], time.perf_counter() - started)

        message = (exchange, routing_key, body, properties)
        try:  # the common case, without the retry machinery
            await once()
            return
        except (*CONNECTION_ERRORS, BrokerUnavailable) as exc:
            log.warning("publish to %r failed (%s); retrying", exchange, exc or type(exc).__name__)
        except Exception:
            self._failed([message])
            raise
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((*CONNECTION_ERRORS, BrokerUnavailable)),
                stop=stop_after_delay(self.settings.publish_timeout),
                wait=wait_exponential(multiplier=0.1, max=2.0),
                reraise=True,
            ):
                with attempt:
                    await once()
        except Exception as exc:
            self._failed([message])
            if not isinstance(exc, (*CONNECTION_ERRORS, BrokerUnavailable)):
                raise
            raise PublishFailed(
                f"could not publish to {exchange!r} within {self.settings.publish_timeout:g}s: "
                f"{exc or type(exc).__name__}"
            ) from None

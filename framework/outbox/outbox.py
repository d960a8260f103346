"""The transactional outbox: events published inside the caller's database transaction.

    outbox = Outbox(settings)
    async with outbox.transaction(conn) as tx:       # conn: a psycopg AsyncConnection
        await conn.execute("insert into orders ...")
        await tx.publish(OrderPlaced(...), key=order_id)

``tx.publish`` takes what ``Publisher.publish`` takes (plus ``key``, the ordering key)
and writes the message, its ``message_id`` fixed now, as a row of ``kanin_outbox`` in
the same transaction (the rows of a transaction are inserted together as it ends):
nothing is sent if it rolls back. A relay (``relay.py``) sends the
committed rows with confirms. The send span starts here, in the caller's trace, and its
context travels in the row's headers, so the consumer's span is its child.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from opentelemetry.trace import TracerProvider

from framework.events import Event
from framework.outbox.tables import CHANNEL
from framework.publisher import prepared
from framework.settings import Settings
from framework.tracing import Tracing
from framework.transport import Properties

INSERT = """
insert into kanin_outbox (message_id, exchange, routing_key, body, properties, ordering_key)
values (%s, %s, %s, %s, %s, %s)"""
_FIELDS = ("content_type", "content_encoding", "delivery_mode", "priority", "correlation_id",
           "reply_to", "expiration", "message_id", "message_type", "user_id", "app_id")  # fmt: skip


def encode(properties: Properties) -> str:
    """The AMQP properties of a row, as JSON (headers hold text and numbers)."""
    data: dict[str, Any] = {
        name: getattr(properties, name) for name in _FIELDS if getattr(properties, name) is not None
    }
    if properties.timestamp is not None:
        data["timestamp"] = properties.timestamp.isoformat()
    data["headers"] = properties.headers or {}
    return json.dumps(data, separators=(",", ":"), default=str)


def decode(data: Mapping[str, Any]) -> Properties:
    fields = {name: data[name] for name in _FIELDS if name in data}
    if "timestamp" in data:
        fields["timestamp"] = datetime.fromisoformat(data["timestamp"])
    return Properties(headers=dict(data.get("headers") or {}), **fields)


class Outbox:
    """Writes events into ``kanin_outbox`` within the caller's transactions."""

    def __init__(
        self,
        settings: Settings,
        *,
        tracer_provider: TracerProvider | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing or Tracing.default(tracer_provider, fast=settings.fast_paths)

    @asynccontextmanager
    async def transaction(self, conn: Any) -> AsyncIterator[OutboxTransaction]:
        """``conn``'s transaction (a savepoint if one is open); its events are rows of it."""
        async with conn.transaction():
            tx = OutboxTransaction(self, conn)
            yield tx
            await tx.flush()


class OutboxTransaction:
    """Publishes into the outbox, in the transaction it belongs to."""

    def __init__(self, outbox: Outbox, conn: Any) -> None:
        self.outbox = outbox
        self.conn = conn
        self.written = 0
        self._rows: list[list[Any]] = []  # written together, before the commit

    async def flush(self) -> None:
        """Insert the rows published so far (one pipelined ``executemany``) and notify
        the relays, who hear it when the transaction commits."""
        if not self._rows:
            return
        async with self.conn.cursor() as cursor:
            await cursor.executemany(INSERT, self._rows)
        self._rows.clear()
        await self.conn.execute(f"notify {CHANNEL}")

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
        key: str | None = None,
    ) -> str:
        """Write ``event`` to the outbox; its ``message_id``. Rows with the same ``key``
        are sent in the order they were written."""
        target, rk, body, properties = prepared(
            event, self.outbox.settings, exchange=exchange, routing_key=routing_key,
            correlation_id=correlation_id, causation_id=causation_id,
            idempotency_key=idempotency_key, headers=headers, persistent=persistent,
        )  # fmt: skip
        with self.outbox.tracing.send(target, rk, properties, len(body)):
            row = [properties.message_id, target, rk, body, encode(properties), key]
        self._rows.append(row)
        self.written += 1
        return str(properties.message_id)

"""Events as they pass: an exchange watched through a queue of its own, or a stream read
from an offset. Nothing is taken from anybody's queue: the watching queue gets copies
and goes with the connection; a stream keeps what is read from it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from framework.headers import integer, text, trace_id
from framework.transport.base import Delivery, StreamOffset, Transport

PREFETCH = 100
BODY_LIMIT = 120


async def tail(
    transport: Transport,
    show: Callable[[Delivery], None],
    *,
    exchange: str | None = None,
    keys: Sequence[str] = ("#",),
    stream: str | None = None,
    offset: StreamOffset = "next",
    count: int | None = None,
) -> int:
    """Hand each event to ``show`` until ``count`` were shown (None: until cancelled);
    from ``exchange`` (one binding per routing-key pattern in ``keys``) or ``stream``."""
    if stream is not None:
        channel = await transport.consumer_channel(stream, PREFETCH, offset=offset)
    else:
        queue = await transport.temporary_queue([(exchange or "", key) for key in keys])
        channel = await transport.consumer_channel(queue, PREFETCH)
    shown = 0
    done = asyncio.get_running_loop().create_future()

    async def one(delivery: Delivery) -> None:
        nonlocal shown
        channel.ack(delivery.delivery_tag)
        if done.done():
            return
        show(delivery)
        shown += 1
        if count is not None and shown >= count:
            done.set_result(None)

    try:
        await channel.start(one)
        await asyncio.wait(
            [done, channel.closing, channel.cancelled], return_when="FIRST_COMPLETED"
        )
    finally:
        await channel.close()
    return shown


def parse_offset(value: str) -> StreamOffset:
    """``first``, ``last``, ``next``, an offset (digits) or an ISO 8601 time (UTC unless
    it says)."""
    if value in ("first", "last", "next"):
        return value
    if value.isdigit():
        return int(value)
    moment = datetime.fromisoformat(value)  # ValueError for anything else
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def event_record(delivery: Delivery) -> dict[str, Any]:
    """What ``kanin events tail --json`` prints of one event."""
    properties, headers = delivery.properties, delivery.headers
    when = properties.timestamp
    offset = headers.get("x-stream-offset")
    record: dict[str, Any] = {
        "time": (when if isinstance(when, datetime) else datetime.now(UTC)).isoformat(),
        "exchange": delivery.exchange,
        "routing_key": delivery.routing_key,
        "type": text(properties.message_type),
        "version": integer(headers.get("x-event-version")),
        "message_id": text(properties.message_id),
        "correlation_id": text(properties.correlation_id),
        "trace_id": trace_id(headers),
        "body": _body(delivery.body),
    }
    if offset is not None:
        record["offset"] = integer(offset)
    return record


def event_line(delivery: Delivery) -> str:
    """One line: time, exchange and routing key, type and version, ids, trace id, body."""
    r = event_record(delivery)
    moment = datetime.fromisoformat(r["time"])
    when = (moment.astimezone(UTC) if moment.tzinfo else moment).strftime("%H:%M:%S.%f")[:12]
    kind = f"{r['type']} v{r['version']}" if r["type"] and r["version"] else r["type"] or "-"
    ids = f"id={r['message_id'] or '-'}"
    if r["correlation_id"] and r["correlation_id"] != r["message_id"]:
        ids += f" corr={r['correlation_id']}"
    trace = f" trace={r['trace_id']}" if r["trace_id"] else ""
    at = f"@{r['offset']} " if "offset" in r else ""
    body = r["body"] if isinstance(r["body"], str) else json.dumps(r["body"], ensure_ascii=False)
    if len(body) > BODY_LIMIT:
        body = body[: BODY_LIMIT - 1] + "…"
    where = f"{r['exchange'] or '(default)'} [{r['routing_key']}]"
    return f"{when} {at}{where} {kind} {ids}{trace} {body}"


def _body(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return f"{body!r} ({len(body)} bytes, not JSON)"

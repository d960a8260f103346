"""DLQ operations on the embedded broker (memory://), and the parked-message model."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest

from framework import Settings
from framework.errors import ConfigError
from framework.ops import dlq
from framework.ops.parked import Parked, body_text, replay_properties
from framework.ops.walk import Interrupted
from framework.topology.expand import QueueDecl
from framework.transport import Delivery, Properties, open_transport
from framework.transport.embedded import MemoryTransport, forget


def parked_properties(i: int, error: str = "Boom", **headers: object) -> Properties:
    return Properties(
        message_id=f"m-{i}",
        correlation_id="flow-1",
        message_type="order.placed",
        delivery_mode=2,
        headers={
            "x-error-type": error,
            "x-error-message": "it broke",
            "x-failed-at": f"2026-11-30T10:0{i}:00.000+00:00",
            "x-failed-consumer": "Orders",
            "x-attempt": 4,
            "x-idempotency-key": f"key-{i}",
            "x-event-version": 2,
            "traceparent": f"00-{i + 1:032x}-{i + 1:016x}-01",
            **headers,
        },
    )


@pytest.fixture
def url() -> Iterator[str]:
    name = f"memory://dlq-{uuid.uuid4().hex[:8]}"
    yield name
    forget(name)


def on(url: str) -> Settings:
    return Settings(_env_file=None, broker_url=url)  # type: ignore[call-arg]


@pytest.fixture
async def broker(url: str) -> AsyncIterator[MemoryTransport]:
    transport = open_transport(on(url), "test")
    assert isinstance(transport, MemoryTransport)
    for name in ("orders", "orders.dlq"):
        await transport.declare(QueueDecl(name))
    channel = await transport.publish_channel(1)
    for i in range(6):
        error = "Boom" if i % 2 else "Bust"
        await channel.publish(("", "orders.dlq", b'{"n": %d}' % i, parked_properties(i, error)))
    yield transport
    await transport.close()


def ids(found: list[Parked]) -> list[str | None]:
    return [p.message_id for p in found]


async def test_show_leaves_the_queue_as_it_was(broker: MemoryTransport) -> None:
    everything = await dlq.show(broker, "orders.dlq")
    assert ids(everything) == [f"m-{i}" for i in range(6)]
    picked = await dlq.show(broker, "orders.dlq", dlq.Selection.of(error_types=["Boom"]), limit=2)
    assert ids(picked) == ["m-1", "m-3"]
    assert ids(await dlq.show(broker, "orders.dlq")) == ids(everything)


async def test_replay_sends_the_selection_back_and_keeps_the_rest_in_order(
    broker: MemoryTransport, url: str
) -> None:
    tally = await dlq.replay(broker, on(url), "orders.dlq", dlq.Selection.of(error_types=["Boom"]))
    assert (tally.total, tally.picked, tally.done, tally.skipped) == (6, 3, 3, 3)
    back = await dlq.show(broker, "orders")
    assert ids(back) == ["m-1", "m-3", "m-5"]
    headers = back[0].delivery.headers
    assert headers["x-attempt"] == 1 and headers["x-replay-count"] == 1
    assert headers["x-idempotency-key"] == "key-1" and "x-error-type" not in headers
    assert ids(await dlq.show(broker, "orders.dlq")) == ["m-0", "m-2", "m-4"]


async def test_limit_rate_and_a_missing_target(broker: MemoryTransport, url: str) -> None:
    settings = on(url)
    tally = await dlq.replay(broker, settings, "orders.dlq", limit=2, rate=1000)
    assert tally.done == 2 and ids(await dlq.show(broker, "orders")) == ["m-0", "m-1"]
    with pytest.raises(ConfigError, match="'nowhere' does not exist"):
        await dlq.replay(broker, settings, "orders.dlq", to="nowhere")
    with pytest.raises(ConfigError, match="--to"):
        await dlq.replay(broker, settings, "orders")
    assert len(await dlq.show(broker, "orders.dlq")) == 4


async def test_a_failed_copy_stops_the_pass_and_leaves_the_message(
    broker: MemoryTransport, url: str
) -> None:
    capped = {"x-max-length": 1, "x-overflow": "reject-publish"}
    await broker.declare(QueueDecl("capped", arguments=capped))
    with pytest.raises(Interrupted) as stopped:
        await dlq.replay(broker, on(url), "orders.dlq", to="capped")
    assert "still in orders.dlq" in str(stopped.value)
    assert stopped.value.tally.done == 1
    assert ids(await dlq.show(broker, "orders.dlq")) == [f"m-{i}" for i in range(1, 6)]


async def test_purge_and_export_with_remove(broker: MemoryTransport) -> None:
    tally = await dlq.purge(broker, "orders.dlq", dlq.Selection.of(message_ids=["key-0", "m-5"]))
    assert tally.done == 2
    out = io.StringIO()
    await dlq.export(broker, "orders.dlq", out, remove=True)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["message_id"] for line in lines] == ["m-1", "m-2", "m-3", "m-4"]
    assert lines[0]["body"] == '{"n": 1}' and lines[0]["properties"]["delivery_mode"] == 2
    assert await dlq.show(broker, "orders.dlq") == []


async def test_overview_groups_and_time_span(broker: MemoryTransport, url: str) -> None:
    seen = await dlq.overview(broker, "orders.dlq")
    assert seen.depth == 6
    assert dict(seen.groups) == {("Boom", "Orders"): 3, ("Bust", "Orders"): 3}
    assert seen.oldest == datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    assert seen.newest == datetime(2026, 11, 30, 10, 5, tzinfo=UTC)
    assert await dlq.dead_letter_queues(on(url), None) == ["orders.dlq"]


def delivery(properties: Properties, body: bytes = b"{}") -> Delivery:
    return Delivery(body, properties, "shop", "order.placed", 1, False, None)  # type: ignore[arg-type]


def test_a_broker_dead_letter_reads_as_its_reason() -> None:
    when = datetime(2026, 11, 30, 9, 0)
    properties = Properties(
        message_id="m",
        headers={
            "x-death": [
                {"reason": "expired", "queue": "orders", "time": when, "exchange": "shop",
                 "routing-keys": ["order.placed"], "count": 1},
            ]
        },
    )  # fmt: skip
    parked = Parked(delivery(properties))
    assert parked.group == ("broker:expired", "")
    assert parked.failed_at == when.replace(tzinfo=UTC)
    summary = parked.summary()
    assert summary["original_exchange"] == "shop"
    assert summary["original_routing_key"] == "order.placed"
    assert dlq.Selection.of(error_types=["broker:expired"])(parked)
    assert not dlq.Selection.of(failed_before=datetime(2026, 11, 30, 8))(parked)
    assert dlq.Selection.of(failed_after=datetime(2026, 11, 30, 8))(parked)


def test_a_kanin_failure_keeps_its_headers_over_x_death_of_its_retries() -> None:
    death = [{"reason": "expired", "queue": "orders.retry.1"}]
    properties = parked_properties(1, "Boom", **{"x-death": death})
    parked = Parked(delivery(properties))
    assert parked.group == ("Boom", "Orders") and parked.trace_id == f"{2:032x}"


def test_the_replayed_copy() -> None:
    properties = parked_properties(
        1, **{"x-death": [{"reason": "expired"}], "x-replay-count": 2, "tenant": bytearray(b"t1")}
    )
    at = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
    copy = replay_properties(delivery(properties), at)
    assert copy.message_id == "m-1" and copy.correlation_id == "flow-1" and copy.delivery_mode == 2
    assert copy.headers == {
        "x-attempt": 1,
        "x-idempotency-key": "key-1",
        "x-event-version": 2,
        "traceparent": properties.headers["traceparent"],  # type: ignore[index]
        "tenant": "t1",
        "x-replayed-at": "2026-11-30T12:00:00.000+00:00",
        "x-replay-count": 3,
    }


def test_bodies_read_as_json_or_as_bytes() -> None:
    assert body_text(b'{"a":1}') == '{\n  "a": 1\n}'
    assert body_text(b"\xff\x00") == "b'\\xff\\x00' (2 bytes, not JSON)"
    assert dlq.work_queue("orders.dlq") == "orders"
    assert dlq.work_queue("orders") is None and dlq.work_queue(".dlq") is None

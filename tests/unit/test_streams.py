"""Streams in the topology: keys, validation, broker arguments, and where they are refused."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pamqp.commands import Basic

from framework import Consumer, Context, Event
from framework.errors import ConfigError, TopologyError
from framework.ops.graph import build, render
from framework.topology import QueueSpec, Topology, expand, load_topology
from framework.transport.memory import MemoryBroker, MemoryBrokerError
from framework.transport.streams import StreamLog
from framework.units import broker_age, parse_size
from framework.worker import queue_specs


def test_a_stream_declares_its_retention_and_nothing_else(tmp_path: Path) -> None:
    file = tmp_path / "t.yaml"
    file.write_text(
        "queues:\n  - name: shop.events.log\n    type: stream\n    max_age: 30d\n"
        "    max_length_bytes: 20GB\n    segment_bytes: 100MiB\n"
    )
    decls = expand(load_topology(file))
    assert [(q.name, q.role) for q in decls.queues] == [("shop.events.log", "work")]
    assert decls.queues[0].arguments == {
        "x-queue-type": "stream",
        "x-max-age": "30D",
        "x-max-length-bytes": 20_000_000_000,
        "x-stream-max-segment-size-bytes": 100 * 2**20,
    }
    assert decls.queues[0].describe() == "queue shop.events.log (stream)"


@pytest.mark.parametrize(
    ("queue", "reason"),
    [
        ("type: stream\n    retry: {attempts: 3}", "a stream has no retries"),
        ("type: stream\n    message_ttl: 1h", "a stream has no 'message_ttl'"),
        ("type: stream\n    delivery_limit: 5", "a stream has no 'delivery_limit'"),
        ("type: stream\n    dead_letter: true", "a stream has no dead letters"),
        ("type: stream\n    durable: false", "a stream must be durable"),
        ("max_age: 7d", "max_age needs a stream (type: stream)"),
        ("type: quorum\n    segment_bytes: 1MB", "segment_bytes needs a stream"),
        ("type: stream\n    arguments: {x-max-age: 1D}", "use 'max_age:' instead"),
        ("type: stream\n    max_length_bytes: lots", "'lots' is not a size"),
    ],
)
def test_what_a_stream_cannot_have_is_refused_with_file_and_line(
    tmp_path: Path, queue: str, reason: str
) -> None:
    file = tmp_path / "t.yaml"
    file.write_text(f"queues:\n  - name: log\n    {queue}\n")
    with pytest.raises(TopologyError) as refused:
        load_topology(file)
    assert len(refused.value.problems) == 1
    problem = str(refused.value.problems[0])
    assert problem.startswith(f"{file}:") and reason in problem


def test_sizes_and_ages() -> None:
    assert parse_size("500MB") == 500_000_000 and parse_size("1GiB") == 2**30
    assert parse_size(" 2 kb ") == 2000 and parse_size(1024) == 1024
    assert broker_age(30 * 86400) == "30D" and broker_age(7200) == "2h"
    assert broker_age(90) == "90s" and broker_age(0.5) == "1s"


class Entry(Event, type="test.entry", version=1):
    n: int


def test_a_consumer_class_on_a_stream_is_refused() -> None:
    class Reader(Consumer):
        queue = "shop.events.log"

        async def handle(self, event: Entry, ctx: Context) -> None:
            pass

    topology = Topology(queues=[QueueSpec(name="shop.events.log", type="stream")])
    with pytest.raises(ConfigError, match=r"'shop\.events\.log', a stream: a consumer class"):
        queue_specs([Reader], topology)


async def test_the_embedded_broker_keeps_a_stream_within_its_retention() -> None:
    broker = MemoryBroker()
    broker.declare_queue("log", {"x-queue-type": "stream", "x-max-length-bytes": 10})
    properties = Basic.Properties()
    for body in (b"aaaa", b"bbbb", b"cccc"):
        broker.publish("", "log", body, properties)
    log = broker.queues["log"].log
    assert log is not None
    assert [(e.offset, e.body) for e in log.entries] == [(1, b"bbbb"), (2, b"cccc")]
    assert log.start("first") == 1 and log.start(0) == 1 and log.start("next") == 3
    assert broker.ready(broker.queues["log"]) == 2
    channel = broker.channel()
    with pytest.raises(MemoryBrokerError, match=r"not basic\.get"):
        channel.basic_get("log")

    async def ignore(message: object, tag: int) -> None:
        pass

    with pytest.raises(MemoryBrokerError, match="needs a prefetch"):
        channel.basic_consume("log", ignore, {"x-stream-offset": "first"})
    aged = StreamLog({"x-max-age": "1s"})
    aged.append(b"old", properties, "", "log")
    aged.entries[0] = replace(aged.entries[0], at=datetime.now(UTC) - timedelta(seconds=2))
    aged.append(b"new", properties, "", "log")
    assert [e.body for e in aged.entries] == [b"new"]


def test_a_stream_is_drawn_as_one_and_needs_no_consumer() -> None:
    from framework.ops.status import Row, problems

    topology = Topology(queues=[QueueSpec(name="log", type="stream")])
    assert 'q_log[["log (stream)"]]' in render(build(topology))
    assert problems([Row("log", True, log=True)]) == []
    assert problems([Row("work", True)]) == ["work has no consumer"]


async def test_tail_on_the_embedded_broker_reads_a_stream_and_watches_an_exchange() -> None:
    from framework import Settings
    from framework.ops.tail import event_line, tail
    from framework.topology.expand import BindingDecl, ExchangeDecl, QueueDecl
    from framework.transport import open_transport
    from framework.transport.embedded import forget

    url = "memory://tail-test"
    transport = open_transport(Settings(_env_file=None, broker_url=url), "t")  # type: ignore[call-arg]
    try:
        await transport.declare(ExchangeDecl("events", "topic"))
        await transport.declare(QueueDecl("log", arguments={"x-queue-type": "stream"}))
        await transport.declare(BindingDecl("events", "log", "queue", "#"))
        channel = await transport.publish_channel(1)
        properties = Basic.Properties(message_type="order.placed", message_id="m-1")
        await channel.publish(("events", "order.placed", b'{"n": 1}', properties))
        lines: list[str] = []
        shown = await tail(
            transport, lambda d: lines.append(event_line(d)), stream="log", offset="first", count=1
        )
        assert shown == 1 and "@0 events [order.placed] order.placed id=m-1" in lines[0]

        watching = asyncio.create_task(
            tail(transport, lambda d: lines.append(d.routing_key), exchange="events",
                 keys=["order.*"], count=1)
        )  # fmt: skip
        await asyncio.sleep(0.05)
        await channel.publish(("events", "payment.captured", b"{}", Basic.Properties()))
        await channel.publish(("events", "order.paid", b"{}", Basic.Properties()))
        assert await asyncio.wait_for(watching, 5) == 1 and lines[-1] == "order.paid"
    finally:
        await transport.close()
        forget(url)

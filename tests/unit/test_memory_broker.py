"""The embedded broker's consumers and clock (routing and dead-lettering are checked
against RabbitMQ in tests/conformance)."""

from __future__ import annotations

import asyncio

from pamqp.commands import Basic

from framework.transport.memory import MemoryBroker, Message
from framework.transport.routing import topic_matches


def props(**fields: object) -> Basic.Properties:
    return Basic.Properties(**fields)  # type: ignore[arg-type]


async def test_prefetch_limits_unacked_deliveries_and_acks_release_more() -> None:
    broker = MemoryBroker()
    broker.declare_queue("work")
    channel = broker.channel()
    channel.basic_qos(2)
    seen: list[tuple[bytes, int]] = []

    async def on_message(message: Message, tag: int) -> None:
        seen.append((message.body, tag))

    channel.basic_consume("work", on_message)
    for n in range(5):
        broker.publish("", "work", str(n).encode(), props())
    await asyncio.sleep(0)
    assert [body for body, _ in seen] == [b"0", b"1"]
    channel.basic_ack(seen[1][1], multiple=True)
    await asyncio.sleep(0)
    assert [body for body, _ in seen] == [b"0", b"1", b"2", b"3"]
    assert len(broker.queues["work"].messages) == 1


async def test_consumers_share_a_queue_round_robin() -> None:
    broker = MemoryBroker()
    broker.declare_queue("work")
    got: dict[str, list[bytes]] = {"a": [], "b": []}
    for name in got:
        channel = broker.channel()

        async def on_message(message: Message, tag: int, name: str = name, ch=channel) -> None:  # type: ignore[no-untyped-def]
            got[name].append(message.body)
            ch.basic_ack(tag)

        channel.basic_consume("work", on_message)
    for n in range(4):
        broker.publish("", "work", str(n).encode(), props())
    await asyncio.sleep(0.01)
    assert got == {"a": [b"0", b"2"], "b": [b"1", b"3"]}


async def test_advance_expires_waiting_messages_without_waiting() -> None:
    broker = MemoryBroker()
    broker.declare_queue("work")
    broker.declare_queue(
        "work.retry.1",
        {
            "x-message-ttl": 60_000,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "work",
        },
    )
    broker.publish("", "work.retry.1", b"m", props(headers={"x-attempt": 2}))
    broker.advance(59)
    assert not broker.queues["work"].messages
    broker.advance(1)
    (message,) = broker.queues["work"].messages
    assert message.headers["x-attempt"] == 2
    assert message.headers["x-death"][0]["reason"] == "expired"


def test_topic_edge_cases() -> None:
    assert topic_matches("#", "a.b.c")
    assert topic_matches("a.#.c", "a.c")
    assert topic_matches("a.#.c", "a.x.y.c")
    assert not topic_matches("a.*.c", "a.c")
    assert topic_matches("*", "word")
    assert not topic_matches("*", "two.words")

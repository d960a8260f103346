"""Headers as foreign clients send them: pika writes ``bytes`` as an AMQP byte array,
which pamqp reads back as ``bytearray``; raw pamqp field tables carry either. kanin
reads every header it uses as the same text, so an event is handled once whatever
client sent it."""

from __future__ import annotations

import asyncio
import json

import pika
import pytest
from pamqp.commands import Basic

from framework import Consumer, Context, Event, Publisher, Reject, RetryPolicy
from framework.headers import integer, plain, text
from framework.topology import QueueSpec, Topology
from tests.conftest import AMQP_URL
from tests.integration.worker_kit import amqp, eventually, running, settings, wait_for_messages

pytestmark = pytest.mark.integration


class Charge(Event, type="test.charge", version=1):
    order: str


@pytest.mark.parametrize("value", ["k-1", b"k-1", bytearray(b"k-1"), memoryview(b"k-1")])
def test_every_form_of_a_header_reads_the_same(value: object) -> None:
    assert text(value) == "k-1"
    assert integer(b"3") == integer(bytearray(b"3")) == integer("3") == 3
    assert integer(True) is None and integer(b"x") is None
    assert plain({"a": bytearray(b"k"), "n": 1}) == {"a": "k", "n": 1}


def publish_with_pika(queue: str, headers: dict[str, object], body: bytes) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.basic_publish(
            "",
            queue,
            body,
            pika.BasicProperties(type="test.charge", message_id="pika-1", headers=headers),
        )
    finally:
        connection.close()


async def test_one_event_sent_by_three_clients_is_handled_once(prefix: str) -> None:
    queue = f"{prefix}.charges"
    seen: list[tuple[str, str | None, str, str]] = []

    class Charges(Consumer):
        async def handle(self, event: Charge, ctx: Context) -> None:
            seen.append((event.order, ctx.causation_id, ctx.exchange, ctx.routing_key))

    Charges.queue = queue
    body = Charge(order="o-1").to_json()
    specs = Topology(queues=[QueueSpec(name=queue)])
    async with running(Charges, topology=specs) as worker:
        async with Publisher(settings()) as publisher:  # a str header
            await publisher.publish(
                Charge(order="o-1"), exchange="", routing_key=queue, idempotency_key="k-1"
            )
        await eventually(lambda: len(seen) == 1, what="handled")
        # pika: bytes, written as a byte array, read as bytearray
        await asyncio.to_thread(
            publish_with_pika,
            queue,
            {"x-idempotency-key": b"k-1", "x-causation-id": b"c-9", "x-event-version": b"1"},
            body,
        )
        async with amqp() as channel:  # raw pamqp field table through aiormq: bytearray
            raw = await channel.get_underlay_channel()
            await raw.basic_publish(
                body,
                routing_key=queue,
                properties=Basic.Properties(
                    message_type="test.charge",
                    headers={"x-idempotency-key": bytearray(b"k-1")},
                ),
            )
        stats = worker.runners[0].stats
        await eventually(lambda: stats.duplicates == 2, what="two duplicates")
    assert stats.handled == 1 and len(seen) == 1


async def test_a_parked_copy_carries_text_headers_whatever_it_came_with(prefix: str) -> None:
    queue = f"{prefix}.charges"

    class Refuses(Consumer):
        retry = RetryPolicy(attempts=2, initial=0.1)

        async def handle(self, event: Charge, ctx: Context) -> None:
            assert ctx.causation_id == "c-9" and ctx.exchange == "shop"
            raise Reject("declined")

    Refuses.queue = queue
    specs = Topology(queues=[QueueSpec(name=queue)])
    async with running(Refuses, topology=specs):
        await asyncio.to_thread(
            publish_with_pika,
            queue,
            {
                "x-causation-id": b"c-9",
                "x-original-exchange": b"shop",
                "x-original-routing-key": b"charge.eu",
                "tenant": b"acme",
            },
            Charge(order="o-2").to_json(),
        )
        async with amqp() as channel:
            (parked,) = await wait_for_messages(channel, f"{queue}.dlq", 1)
    headers = parked.headers
    assert headers["x-original-exchange"] == "shop"
    assert headers["x-original-routing-key"] == "charge.eu"
    assert headers["x-causation-id"] == "c-9" and headers["tenant"] == "acme"
    assert headers["x-idempotency-key"] == "pika-1"
    assert headers["x-error-type"] == "Reject"
    assert json.loads(parked.body) == {"order": "o-2"}

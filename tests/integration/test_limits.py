"""Bounded inputs on the real RabbitMQ: a body, JSON or header table over its limit goes to
the DLQ at once, undecoded and byte-identical; one exactly at the limit is handled."""

from __future__ import annotations

import json

import aio_pika
import pytest

from framework import Consumer, Context, Event, RetryPolicy
from framework.topology import QueueSpec, Topology
from tests.integration.worker_kit import amqp, count, eventually, running, wait_for_messages

pytestmark = pytest.mark.integration


class Note(Event, type="test.note", version=1):
    text: str
    tags: object = None


def padded(size: int) -> bytes:
    """A valid ``test.note`` body of exactly ``size`` bytes."""
    bare = json.dumps({"text": ""}).encode()
    return json.dumps({"text": "x" * (size - len(bare))}).encode()


def topology(prefix: str) -> Topology:
    return Topology(queues=[QueueSpec(name=f"{prefix}.work")])


def keeper(prefix: str, seen: list[str], **limits: int) -> type[Consumer]:
    class Keep(Consumer):
        queue = f"{prefix}.work"
        retry = RetryPolicy(attempts=5, initial=5)
        max_body_bytes = limits.get("max_body_bytes")

        async def handle(self, event: Note, ctx: Context) -> None:
            seen.append(event.text[:10])

    return Keep


async def send(prefix: str, *messages: aio_pika.Message) -> None:
    async with amqp() as channel:
        for message in messages:
            await channel.default_exchange.publish(message, routing_key=f"{prefix}.work")


async def test_a_body_at_the_limit_is_handled_and_one_byte_over_is_parked_undecoded(
    prefix: str,
) -> None:
    seen: list[str] = []
    at, over = padded(1000), padded(1001)
    assert (len(at), len(over)) == (1000, 1001)
    consumer = keeper(prefix, seen, max_body_bytes=1000)
    async with running(consumer, topology=topology(prefix)) as worker, amqp() as channel:
        await send(prefix, aio_pika.Message(at, type="test.note"))
        await send(prefix, aio_pika.Message(over, type="test.note", message_id="big-1"))
        [dead] = await wait_for_messages(channel, f"{prefix}.work.dlq", 1)
        await eventually(lambda: worker.runners[0].stats.handled == 1, what="the one at the limit")
        assert await count(channel, f"{prefix}.work.retry.1") == 0
    assert seen == ["xxxxxxxxxx"]
    assert dead.body == over
    assert dead.headers["x-error-type"] == "BodyTooLarge"
    assert "1001 bytes is over the limit of 1000" in str(dead.headers["x-error-message"])
    assert dead.headers["x-attempt"] == 1


async def test_the_body_limit_comes_from_the_setting_without_a_class_value(prefix: str) -> None:
    seen: list[str] = []
    over = padded(5000)
    async with (
        running(keeper(prefix, seen), topology=topology(prefix), max_body_bytes=4096),
        amqp() as channel,
    ):
        await send(prefix, aio_pika.Message(over, type="test.note"))
        [dead] = await wait_for_messages(channel, f"{prefix}.work.dlq", 1)
    assert seen == []
    assert (dead.body, dead.headers["x-error-type"]) == (over, "BodyTooLarge")


async def test_deep_json_and_oversized_headers_are_parked_with_their_reason(prefix: str) -> None:
    seen: list[str] = []
    # the object itself is one level: 64 levels in all is the limit
    deep = b'{"text": "deep", "tags": ' + b"[" * 64 + b"]" * 64 + b"}"
    shallow = b'{"text": "ok", "tags": ' + b"[" * 63 + b"]" * 63 + b"}"
    strings = b'{"text": "' + b"[" * 500 + b'"}'  # brackets inside a string do not nest
    many = {f"h{i}": i for i in range(129)}
    large = {"blob": bytearray(70_000)}
    async with (
        running(keeper(prefix, seen), topology=topology(prefix)) as worker,
        amqp() as channel,
    ):
        await send(
            prefix,
            aio_pika.Message(deep, type="test.note", message_id="deep"),
            aio_pika.Message(shallow, type="test.note", message_id="shallow"),
            aio_pika.Message(strings, type="test.note", message_id="strings"),
            aio_pika.Message(b'{"text": "many"}', type="test.note", headers=many),
            aio_pika.Message(b'{"text": "large"}', type="test.note", headers=large),
        )
        parked = await wait_for_messages(channel, f"{prefix}.work.dlq", 3)
        await eventually(lambda: worker.runners[0].stats.handled == 2, what="the two in bounds")
    reasons = {json.loads(m.body)["text"]: m.headers["x-error-type"] for m in parked}
    assert reasons == {"deep": "JsonTooDeep", "many": "TooManyHeaders", "large": "HeadersTooLarge"}
    assert next(m.body for m in parked if m.headers["x-error-type"] == "JsonTooDeep") == deep
    assert sorted(seen) == ["[[[[[[[[[[", "ok"]

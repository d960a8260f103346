"""Routing, dead-lettering and redelivery: the embedded broker against RabbitMQ.

Every scenario runs on both; they must give the same results. Where they do not, the
embedded broker (framework/transport/memory.py) is wrong."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime

import pytest

from tests.conformance.sides import Got, MemorySide, RabbitSide, Side


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.integration)])
async def side(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[Side]:
    opened: Side = MemorySide() if request.param == "memory" else await RabbitSide.open()
    try:
        yield opened
    finally:
        await opened.close()


async def bodies(side: Side, queue: str) -> list[bytes]:
    out = []
    while (got := await side.get(queue)) is not None:
        await side.ack(got)
        out.append(got.body)
    return out


async def arrival(side: Side, queue: str, within: float = 10.0) -> Got:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = await side.get(queue)
        if got is not None:
            return got
        await asyncio.sleep(0.02)
    raise AssertionError(f"nothing arrived in {queue} within {within}s")


async def queues(side: Side, prefix: str, *names: str) -> list[str]:
    full = [f"{prefix}.{n}" for n in names]
    for name in full:
        await side.queue(name)
    return full


async def test_direct_and_default_exchange(side: Side, prefix: str) -> None:
    a, b = await queues(side, prefix, "a", "b")
    await side.exchange(f"{prefix}.x", "direct")
    await side.bind(f"{prefix}.x", a, "red")
    await side.bind(f"{prefix}.x", b, "green")
    await side.bind(f"{prefix}.x", b, "red")
    await side.publish(f"{prefix}.x", "red", b"1")
    await side.publish(f"{prefix}.x", "green", b"2")
    await side.publish(f"{prefix}.x", "blue", b"3")
    await side.publish("", a, b"4")
    assert await bodies(side, a) == [b"1", b"4"]
    assert await bodies(side, b) == [b"1", b"2"]


TOPIC_CASES = {
    "quick.orange.rabbit": ["q1", "q2"],
    "lazy.orange.elephant": ["q1", "q3"],
    "quick.orange.fox": ["q1"],
    "lazy.brown.fox": ["q3"],
    "lazy": ["q3"],
    "quick.brown.fox": [],
    "orange": [],
    "quick.orange.male.rabbit": [],
    "lazy.orange.male.rabbit": ["q3"],
    "a.b.c.end": ["q4"],
    "end": ["q4"],
}


async def test_topic_patterns(side: Side, prefix: str) -> None:
    names = await queues(side, prefix, "q1", "q2", "q3", "q4")
    await side.exchange(f"{prefix}.t", "topic")
    for queue, pattern in zip(names, ["*.orange.*", "*.*.rabbit", "lazy.#", "#.end"], strict=True):
        await side.bind(f"{prefix}.t", queue, pattern)
    for key in TOPIC_CASES:
        await side.publish(f"{prefix}.t", key, key.encode())
    for queue, short in zip(names, ["q1", "q2", "q3", "q4"], strict=True):
        expected = [k.encode() for k, targets in TOPIC_CASES.items() if short in targets]
        assert await bodies(side, queue) == expected, short


async def test_fanout_and_headers(side: Side, prefix: str) -> None:
    f1, f2, all_, any_ = await queues(side, prefix, "f1", "f2", "all", "any")
    await side.exchange(f"{prefix}.f", "fanout")
    await side.bind(f"{prefix}.f", f1, "ignored")
    await side.bind(f"{prefix}.f", f2)
    await side.publish(f"{prefix}.f", "whatever", b"fan")
    assert await bodies(side, f1) == await bodies(side, f2) == [b"fan"]

    await side.exchange(f"{prefix}.h", "headers")
    await side.bind(
        f"{prefix}.h", all_, arguments={"x-match": "all", "kind": "order", "region": "eu"}
    )
    await side.bind(
        f"{prefix}.h", any_, arguments={"x-match": "any", "kind": "order", "region": "eu"}
    )
    await side.publish(f"{prefix}.h", "", b"both", headers={"kind": "order", "region": "eu"})
    await side.publish(f"{prefix}.h", "", b"one", headers={"kind": "order", "region": "us"})
    await side.publish(f"{prefix}.h", "", b"none", headers={"kind": "refund"})
    await side.publish(f"{prefix}.h", "", b"x-only", headers={"x-kind": "order"})
    assert await bodies(side, all_) == [b"both"]
    assert await bodies(side, any_) == [b"both", b"one"]


async def test_exchange_to_exchange_alternate_and_mandatory(side: Side, prefix: str) -> None:
    inner, lost = await queues(side, prefix, "inner", "lost")
    await side.exchange(f"{prefix}.ae", "fanout")
    await side.bind(f"{prefix}.ae", lost)
    await side.exchange(f"{prefix}.outer", "topic", {"alternate-exchange": f"{prefix}.ae"})
    await side.exchange(f"{prefix}.inner", "direct")
    await side.bind_exchange(f"{prefix}.outer", f"{prefix}.inner", "order.*")
    await side.bind(f"{prefix}.inner", inner, "order.placed")
    await side.exchange(f"{prefix}.plain", "direct")

    assert await side.publish(f"{prefix}.outer", "order.placed", b"in", mandatory=True) == "routed"
    # reaches the inner exchange, but no queue: not routed, and the alternate is not used
    assert (
        await side.publish(f"{prefix}.outer", "order.paid", b"nowhere", mandatory=True)
        == "returned"
    )
    assert await side.publish(f"{prefix}.outer", "refund.made", b"ae", mandatory=True) == "routed"
    assert await side.publish(f"{prefix}.plain", "x", b"gone", mandatory=True) == "returned"
    assert await side.publish(f"{prefix}.plain", "x", b"gone") == "routed"
    assert await bodies(side, inner) == [b"in"]
    assert await bodies(side, lost) == [b"ae"]


def dead_letter_args(prefix: str, target: str, **more: object) -> dict[str, object]:
    return {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{prefix}.{target}", **more}


async def test_queue_ttl_dead_letters_with_x_death(side: Side, prefix: str) -> None:
    (target,) = await queues(side, prefix, "target")
    wait = f"{prefix}.wait"
    await side.queue(wait, dead_letter_args(prefix, "target", **{"x-message-ttl": 100}))
    await side.publish("", wait, b"later", headers={"x-attempt": 2})
    got = await arrival(side, target)
    assert got.body == b"later" and got.routing_key == target
    assert got.headers["x-attempt"] == 2
    (death,) = got.headers["x-death"]
    assert {k: death[k] for k in ("count", "reason", "queue", "exchange", "routing-keys")} == {
        "count": 1, "reason": "expired", "queue": wait, "exchange": "", "routing-keys": [wait],
    }  # fmt: skip
    assert isinstance(death["time"], datetime)
    assert "original-expiration" not in death
    assert got.headers["x-first-death-reason"] == "expired"
    assert got.headers["x-first-death-queue"] == wait
    assert got.headers["x-first-death-exchange"] == ""


async def test_message_expiration_dead_letters_and_is_removed(side: Side, prefix: str) -> None:
    (target,) = await queues(side, prefix, "target")
    source = f"{prefix}.source"
    await side.queue(source, dead_letter_args(prefix, "target"))
    await side.publish("", source, b"short", expiration="100")
    got = await arrival(side, target)
    (death,) = got.headers["x-death"]
    assert death["reason"] == "expired"
    assert death["original-expiration"] == "100"
    assert got.expiration is None


async def test_reject_requeue_and_dead_letter(side: Side, prefix: str) -> None:
    (dlq,) = await queues(side, prefix, "dlq")
    work = f"{prefix}.work"
    await side.queue(work, dead_letter_args(prefix, "dlq"))
    await side.publish("", work, b"m")
    first = await arrival(side, work)
    assert not first.redelivered
    await side.reject(first, requeue=True)
    again = await arrival(side, work)
    assert again.body == b"m" and again.redelivered
    await side.reject(again, requeue=False)
    dead = await arrival(side, dlq)
    (death,) = dead.headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("rejected", work, 1)


async def test_max_length_drop_head_and_reject_publish(side: Side, prefix: str) -> None:
    (dlq,) = await queues(side, prefix, "dlq")
    capped = f"{prefix}.capped"
    await side.queue(capped, dead_letter_args(prefix, "dlq", **{"x-max-length": 2}))
    for n in (b"1", b"2", b"3"):
        assert await side.publish("", capped, n) == "routed"
    assert await bodies(side, capped) == [b"2", b"3"]
    dead = await arrival(side, dlq)
    assert dead.body == b"1" and dead.headers["x-death"][0]["reason"] == "maxlen"

    strict = f"{prefix}.strict"
    await side.queue(strict, {"x-max-length": 1, "x-overflow": "reject-publish"})
    assert await side.publish("", strict, b"a") == "routed"
    assert await side.publish("", strict, b"b") == "refused"
    assert await bodies(side, strict) == [b"a"]


async def test_x_death_counts_each_queue_and_reason(side: Side, prefix: str) -> None:
    """work -(rejected)-> wait -(expired)-> work, twice: one entry per (queue, reason)."""
    work, wait = f"{prefix}.work", f"{prefix}.wait"
    await side.queue(work, dead_letter_args(prefix, "wait"))
    await side.queue(wait, dead_letter_args(prefix, "work", **{"x-message-ttl": 50}))
    await side.publish("", work, b"cycle")
    for _ in range(2):
        got = await arrival(side, work)
        await side.reject(got, requeue=False)
    got = await arrival(side, work)
    deaths = [(d["queue"], d["reason"], d["count"]) for d in got.headers["x-death"]]
    assert deaths == [(wait, "expired", 2), (work, "rejected", 2)]
    assert got.headers["x-first-death-queue"] == work
    assert got.headers["x-first-death-reason"] == "rejected"


async def test_expiry_cycle_without_rejection_is_dropped(side: Side, prefix: str) -> None:
    """A message that would expire back into a queue it expired in is dropped."""
    a, b = f"{prefix}.a", f"{prefix}.b"
    await side.queue(a, dead_letter_args(prefix, "b", **{"x-message-ttl": 50}))
    await side.queue(b, dead_letter_args(prefix, "a", **{"x-message-ttl": 50}))
    await side.publish("", a, b"loop")
    await asyncio.sleep(0.6)
    assert await bodies(side, a) == [] and await bodies(side, b) == []


async def test_unacked_messages_come_back_redelivered_when_the_channel_closes(
    side: Side, prefix: str
) -> None:
    (work,) = await queues(side, prefix, "work")
    for n in (b"1", b"2"):
        await side.publish("", work, n)
    first = await arrival(side, work)
    assert first.body == b"1"
    await side.reopen()
    again = await arrival(side, work)
    assert (again.body, again.redelivered) == (b"1", True)
    await side.ack(again)
    assert [g.body for g in [await arrival(side, work)]] == [b"2"]


async def test_quorum_delivery_limit_dead_letters_a_message_returned_too_often(
    side: Side, prefix: str
) -> None:
    (dlq,) = await queues(side, prefix, "dlq")
    work = f"{prefix}.work"
    limited = {"x-queue-type": "quorum", "x-delivery-limit": 1}
    await side.queue(work, dead_letter_args(prefix, "dlq", **limited))
    await side.publish("", work, b"poison")
    first = await arrival(side, work)
    assert first.headers.get("x-delivery-count", 0) == 0 and not first.redelivered
    await side.reject(first, requeue=True)
    second = await arrival(side, work)
    assert second.redelivered and second.headers["x-delivery-count"] == 1
    await side.reopen()  # returned by a closing channel: counted too
    with pytest.raises(AssertionError):
        await arrival(side, work, within=1.0)
    dead = await arrival(side, dlq)
    assert dead.body == b"poison"
    (death,) = dead.headers["x-death"]
    assert (death["reason"], death["queue"], death["count"]) == ("delivery_limit", work, 1)
    assert dead.headers["x-first-death-reason"] == "delivery_limit"

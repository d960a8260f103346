"""Streams: the embedded broker against RabbitMQ, offsets, reading again, time offsets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from tests.conformance.sides import MemorySide, RabbitSide, Side

STREAM = {"x-queue-type": "stream"}


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.integration)])
async def side(request: pytest.FixtureRequest) -> AsyncIterator[Side]:
    opened: Side = MemorySide() if request.param == "memory" else await RabbitSide.open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_offsets_first_a_number_and_next(side: Side, prefix: str) -> None:
    log = f"{prefix}.log"
    await side.queue(log, STREAM)
    for n in range(5):
        await side.publish("", log, b"%d" % n)
    assert await side.read(log, "first", 5) == [(n, b"%d" % n) for n in range(5)]
    assert await side.read(log, 3, 2) == [(3, b"3"), (4, b"4")]
    waiting = asyncio.create_task(side.read(log, "next", 1))
    await asyncio.sleep(0.5)  # the consumer is there before the next entry
    await side.publish("", log, b"5")
    assert await waiting == [(5, b"5")]


async def test_reading_takes_nothing_and_a_reader_resumes_where_it_stopped(
    side: Side, prefix: str
) -> None:
    log = f"{prefix}.log"
    await side.exchange(f"{prefix}.events", "topic")
    await side.queue(log, STREAM)
    await side.bind(f"{prefix}.events", log, "#")
    for n in range(6):
        await side.publish(f"{prefix}.events", f"order.{n}", b"%d" % n)
    first = await side.read(log, "first", 3)
    assert first == [(0, b"0"), (1, b"1"), (2, b"2")]
    rest = await side.read(log, first[-1][0] + 1, 3)  # a checkpoint of 2: on from 3
    assert rest == [(3, b"3"), (4, b"4"), (5, b"5")]
    assert len(await side.read(log, "first", 6)) == 6  # all still there


async def test_a_time_offset_starts_at_the_first_entry_since(side: Side, prefix: str) -> None:
    log = f"{prefix}.log"
    await side.queue(log, STREAM)
    await side.publish("", log, b"before")
    await asyncio.sleep(2.0)
    since = datetime.now(UTC).replace(microsecond=0)  # AMQP timestamps are whole seconds
    await asyncio.sleep(1.1)
    await side.publish("", log, b"after")
    assert await side.read(log, since, 1) == [(1, b"after")]

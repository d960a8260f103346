"""Coalesced acks against a model of RabbitMQ's delivery-tag rules (no broker).

The model refuses what RabbitMQ refuses: acking a tag that is not outstanding (the
broker closes the channel with PRECONDITION_FAILED - unknown delivery tag). Every frame
write yields to the event loop, as a real socket drain does.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from framework.transport.consuming import AmqpConsumerChannel as ConsumerChannel


class BrokerModel:
    def __init__(self, tags: int) -> None:
        self.outstanding = set(range(1, tags + 1))
        self.settled: list[int] = []
        self.is_closed = False

    async def basic_ack(self, tag: int, multiple: bool = False) -> None:
        await asyncio.sleep(0)
        if multiple:
            covered = {t for t in self.outstanding if t <= tag}
            if tag not in self.outstanding:
                raise AssertionError(f"unknown delivery tag {tag}")
        else:
            if tag not in self.outstanding:
                raise AssertionError(f"unknown delivery tag {tag}")
            covered = {tag}
        self.outstanding -= covered
        self.settled += sorted(covered)

    async def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        await asyncio.sleep(0)
        if tag not in self.outstanding:
            raise AssertionError(f"unknown delivery tag {tag}")
        self.outstanding.discard(tag)
        self.settled.append(tag)


@pytest.mark.parametrize("seed", range(30))
async def test_random_completion_order_settles_every_tag_once(seed: int) -> None:
    rng = random.Random(seed)
    tags = 200
    broker = BrokerModel(tags)
    channel = ConsumerChannel(broker, "q", prefetch=tags)  # type: ignore[arg-type]
    for tag in range(1, tags + 1):
        channel._pending[tag] = None  # delivered, in order

    async def finish(tag: int) -> None:
        await asyncio.sleep(rng.random() * 0.01)
        if rng.random() < 0.1:
            await channel.nack(tag, requeue=True)
        else:
            channel.ack(tag)

    await asyncio.gather(*(finish(tag) for tag in range(1, tags + 1)))
    await channel.drain()
    assert broker.outstanding == set()
    assert sorted(broker.settled) == list(range(1, tags + 1))


async def test_finished_runs_share_one_multiple_ack() -> None:
    broker = BrokerModel(100)
    frames: list[tuple[int, bool]] = []
    real_ack = broker.basic_ack

    async def recording_ack(tag: int, multiple: bool = False) -> None:
        frames.append((tag, multiple))
        await real_ack(tag, multiple)

    broker.basic_ack = recording_ack  # type: ignore[method-assign]
    channel = ConsumerChannel(broker, "q", prefetch=100)  # type: ignore[arg-type]
    for tag in range(1, 101):
        channel._pending[tag] = None
    for tag in range(1, 101):
        channel.ack(tag)
    await channel.drain()
    assert frames == [(100, True)]
    assert channel.acked == 100

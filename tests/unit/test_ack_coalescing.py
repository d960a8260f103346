"""Coalesced acks against a model of RabbitMQ's delivery-tag rules (no broker).

The model refuses what RabbitMQ refuses: acking a tag that is not outstanding (the
broker closes the channel with PRECONDITION_FAILED - unknown delivery tag). Every frame
write yields to the event loop, as a real socket drain does.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from framework.transport.consuming import HOLD
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
    channel, _, frames = recording(100, prefetch=100)
    for tag in range(1, 101):
        channel.ack(tag)
    await channel.drain()
    assert frames == [(100, True)]
    assert channel.acked == 100


def recording(
    tags: int, prefetch: int
) -> tuple[ConsumerChannel, BrokerModel, list[tuple[int, bool]]]:
    """A channel with ``tags`` deliveries outstanding, and the ack frames it sends."""
    broker = BrokerModel(tags)
    frames: list[tuple[int, bool]] = []
    real_ack = broker.basic_ack

    async def recording_ack(tag: int, multiple: bool = False) -> None:
        frames.append((tag, multiple))
        await real_ack(tag, multiple)

    broker.basic_ack = recording_ack  # type: ignore[method-assign]
    channel = ConsumerChannel(broker, "q", prefetch=prefetch)  # type: ignore[arg-type]
    for tag in range(1, tags + 1):
        channel._pending[tag] = None
    return channel, broker, frames


async def test_acks_behind_a_running_delivery_wait_for_it_and_go_out_as_one() -> None:
    channel, broker, frames = recording(10, prefetch=100)
    for tag in range(2, 11):
        channel.ack(tag)
    await asyncio.sleep(0.01)
    assert frames == []  # held: tag 1 is still running
    channel.ack(1)
    await channel.drain()
    assert frames == [(10, True)]
    assert broker.outstanding == set()


async def test_acks_held_longer_than_the_hold_go_out_one_by_one() -> None:
    channel, broker, frames = recording(10, prefetch=100)
    for tag in range(2, 11):
        channel.ack(tag)
    await asyncio.sleep(HOLD * 3)
    assert frames == [(tag, False) for tag in range(2, 11)]
    assert broker.outstanding == {1}  # the slow one is still running, nothing waits on it


async def test_no_more_than_half_the_prefetch_is_held() -> None:
    channel, broker, frames = recording(10, prefetch=10)
    for tag in range(2, 7):  # 5 finished behind tag 1: half of the prefetch
        channel.ack(tag)
    await asyncio.sleep(0.01)
    assert frames == [(tag, False) for tag in range(2, 7)]
    assert broker.outstanding == {1, 7, 8, 9, 10}


async def test_drain_sends_the_held_acks() -> None:
    channel, broker, frames = recording(3, prefetch=100)
    channel.ack(3)
    await channel.drain()
    assert frames == [(3, False)]
    assert broker.outstanding == {1, 2}

"""The test kit itself: what it reports, how settle() treats time, and kits kept apart."""

from __future__ import annotations

import asyncio

import pytest

from framework import Consumer, Context, Event, Reject, RetryPolicy
from framework.testing import TestKit
from framework.transport import Properties


class Job(Event, type="kit.job", version=1):
    n: int


class Done(Event, type="kit.done", version=1):
    n: int


class Slowly(Consumer):
    """Fails twice, ten minutes apart, then publishes Done; n=0 is rejected."""

    queue = "kit.slowly"
    retry = RetryPolicy(attempts=3, backoff="fixed", initial=600.0, max=600.0)
    seen: list[tuple[int, int]]

    async def on_startup(self) -> None:
        self.seen = []

    async def handle(self, event: Job, ctx: Context) -> None:
        self.seen.append((event.n, ctx.attempt))
        if event.n == 0:
            raise Reject("zero is not a job")
        if ctx.attempt < 3:
            raise TimeoutError(f"attempt {ctx.attempt}")
        await ctx.publish(Done(n=event.n), exchange="", routing_key="kit.done")


class Count(Consumer):
    queue = "kit.done"

    async def handle(self, event: Done, ctx: Context) -> None:
        ctx.logger.info("done %d", event.n)


def consumer(kit: TestKit, cls: type[Consumer]) -> Consumer:
    return next(r.consumer for r in kit.worker.runners if r.cls is cls)


async def test_settle_skips_retry_waits_on_the_broker_clock() -> None:
    async with TestKit(Slowly, Count) as kit:
        before = kit.broker.now()
        await kit.publish(Job(n=7), exchange="", routing_key="kit.slowly")
        await kit.settle()
        # two waits of 600 s passed on the broker's clock, none on the wall clock
        assert kit.broker.now() - before >= 1200
        assert consumer(kit, Slowly).seen == [(7, 1), (7, 2), (7, 3)]  # type: ignore[attr-defined]
        stats = kit.stats(Slowly)
        assert (stats.received, stats.handled, stats.retried, stats.dead_lettered) == (3, 1, 2, 0)
        assert kit.stats(Count).handled == 1


async def test_published_lists_what_was_sent_not_the_retry_copies() -> None:
    async with TestKit(Slowly, Count) as kit:
        message_id = await kit.publish(Job(n=3), exchange="", routing_key="kit.slowly")
        await kit.settle()
        assert [(m.type, m.routing_key) for m in kit.published()] == [
            ("kit.job", "kit.slowly"),
            ("kit.done", "kit.done"),
        ]
        (done,) = kit.published("kit.done")
        assert done.body == b'{"n":3}'
        assert done.properties.correlation_id == message_id  # the flow's first event
        assert done.headers["x-causation-id"]  # the (retried) message that was handled
        assert kit.published("kit.nothing") == []


async def test_dead_letters_keep_the_body_and_say_why() -> None:
    async with TestKit(Slowly) as kit:
        await kit.publish(Job(n=0), exchange="", routing_key="kit.slowly")
        body = b"\xff not json"
        await kit.worker.publisher.publish_raw(
            "", "kit.slowly", body, Properties(message_type="kit.job", message_id="raw-1")
        )
        await kit.settle()
        job, raw = kit.published("kit.job")  # raw publishes are listed too
        assert raw.body == body
        # a parked copy has its own message id; the original's stays its idempotency key
        parked = {m.headers["x-idempotency-key"]: m for m in kit.dead_letters("kit.slowly")}
        assert set(parked) == {"raw-1", job.properties.message_id}
        assert parked["raw-1"].body == body
        assert parked["raw-1"].headers["x-error-type"] == "DecodeError"
        rejected = parked[str(job.properties.message_id)]
        assert rejected.body == job.body
        assert rejected.headers["x-error-type"] == "Reject"
        assert "zero is not a job" in rejected.headers["x-error-message"]
        assert kit.stats(Slowly).dead_lettered == 2
        assert kit.dead_letters("kit.unknown") == []


async def test_two_kits_never_see_each_others_messages() -> None:
    async with TestKit(Slowly, Count) as one, TestKit(Slowly, Count) as two:
        assert one.url != two.url
        await one.publish(Job(n=1), exchange="", routing_key="kit.slowly")
        await asyncio.gather(one.settle(), two.settle())
        assert one.stats(Slowly).handled == 1
        assert two.stats(Slowly).received == 0
        assert two.published() == []


async def test_stats_of_a_consumer_that_is_not_running() -> None:
    async with TestKit(Slowly) as kit:
        with pytest.raises(KeyError, match="Count is not running"):
            kit.stats(Count)


async def test_settle_gives_up_on_a_handler_that_never_ends() -> None:
    release = asyncio.Event()

    class Stuck(Consumer):
        queue = "kit.stuck"

        async def handle(self, event: Job, ctx: Context) -> None:
            await release.wait()

    async with TestKit(Stuck) as kit:
        await kit.publish(Job(n=1), exchange="", routing_key="kit.stuck")
        with pytest.raises(AssertionError, match="not settled after 20 steps"):
            await kit.settle(max_steps=20)
        release.set()
        await kit.settle()
        assert kit.stats(Stuck).handled == 1

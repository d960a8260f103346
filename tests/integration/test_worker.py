"""The worker against the real RabbitMQ: handling, three-level retries, DLQ, shutdown."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime

import aio_pika
import pytest

from framework import (
    Consumer,
    Context,
    Event,
    Publisher,
    Reject,
    Retry,
    RetryPolicy,
    Unroutable,
    Worker,
)
from framework.topology import QueueSpec, Topology
from tests.conftest import BrokerAdmin
from tests.integration.worker_kit import (
    amqp,
    close_connections_soon,
    count,
    drain,
    eventually,
    running,
    settings,
    started,
    wait_for_messages,
)

pytestmark = pytest.mark.integration


class Ping(Event, type="test.ping", version=1):
    n: int


class Pong(Event, type="test.pong", version=1):
    n: int


def topology(prefix: str, **retry: object) -> Topology:
    policy = RetryPolicy(**retry) if retry else None  # type: ignore[arg-type]
    return Topology(queues=[QueueSpec(name=f"{prefix}.work", retry=policy)])


async def publish_ping(prefix: str, *numbers: int) -> list[str]:
    async with Publisher(settings()) as publisher:
        return [
            await publisher.publish(Ping(n=n), exchange="", routing_key=f"{prefix}.work")
            for n in numbers
        ]


async def test_fails_twice_then_succeeds_on_attempt_3_through_the_wait_queues(
    prefix: str,
) -> None:
    seen: list[tuple[int, int, float]] = []

    class Flaky(Consumer):
        queue = f"{prefix}.work"
        retry = RetryPolicy(attempts=4, backoff="exponential", initial=0.3, multiplier=2)

        async def handle(self, event: Ping, ctx: Context) -> None:
            seen.append((event.n, ctx.attempt, time.monotonic()))
            if ctx.attempt < 3:
                raise RuntimeError(f"boom {ctx.attempt}")

    async with running(Flaky, topology=topology(prefix)) as worker:
        await publish_ping(prefix, 7)
        await eventually(lambda: len(seen) == 3, what="three attempts")
        await asyncio.sleep(0.2)
        stats = worker.runners[0].stats
    assert [(n, a) for n, a, _ in seen] == [(7, 1), (7, 2), (7, 3)]
    # the waits are the schedule: 0.3 s after attempt 1, 0.6 s after attempt 2
    assert seen[1][2] - seen[0][2] >= 0.3
    assert seen[2][2] - seen[1][2] >= 0.6
    assert (stats.handled, stats.retried, stats.dead_lettered) == (1, 2, 0)
    async with amqp() as channel:
        for queue in (f"{prefix}.work", f"{prefix}.work.retry.1", f"{prefix}.work.retry.2"):
            assert await count(channel, queue) == 0
        assert await count(channel, f"{prefix}.work.dlq") == 0


async def test_always_failing_lands_in_dlq_after_n_attempts_with_headers(prefix: str) -> None:
    calls: list[int] = []

    class Broken(Consumer):
        queue = f"{prefix}.work"
        retry = RetryPolicy(attempts=3, backoff="fixed", initial=0.1)

        async def handle(self, event: Ping, ctx: Context) -> None:
            calls.append(ctx.attempt)
            raise ValueError("database says no " + "x" * 2000)

    async with running(Broken, topology=topology(prefix)):
        [message_id] = await publish_ping(prefix, 1)
        async with amqp() as channel:
            [dead] = await wait_for_messages(channel, f"{prefix}.work.dlq", 1)
    assert calls == [1, 2, 3]
    assert json.loads(dead.body) == {"n": 1}
    headers = dead.headers
    assert headers["x-error-type"] == "ValueError"
    assert str(headers["x-error-message"]).startswith("gave up after 3 attempts: database says no")
    assert len(str(headers["x-error-message"])) == 1024
    assert headers["x-failed-consumer"].endswith("Broken")
    assert headers["x-original-exchange"] == ""
    assert headers["x-original-routing-key"] == f"{prefix}.work"
    assert headers["x-attempt"] == 3
    assert headers["x-idempotency-key"] == message_id  # identity kept; message_id is fresh
    assert dead.message_id != message_id
    assert datetime.fromisoformat(str(headers["x-failed-at"])).tzinfo is not None
    assert dead.type == "test.ping"


@pytest.mark.parametrize(
    ("body", "type_", "error_type"),
    [
        (b'{"n": 1', "test.ping", "DecodeError"),  # malformed JSON
        (b"", "test.ping", "DecodeError"),  # empty body
        (b'{"n": "not a number"}', "test.ping", "ValidationError"),  # schema-invalid
        (b"\xff\xfe\x00garbage", "test.ping", "DecodeError"),  # not even UTF-8
        (b'{"n": 1}', "test.unknown", "UnknownEventType"),  # no handler for the type
    ],
    ids=["malformed", "empty", "schema-invalid", "binary", "unknown-type"],
)
async def test_bad_messages_go_to_dlq_at_once_with_body_identical(
    prefix: str, body: bytes, type_: str, error_type: str
) -> None:
    calls: list[object] = []

    class Strict(Consumer):
        queue = f"{prefix}.work"
        retry = RetryPolicy(attempts=5, initial=5)

        async def handle(self, event: Ping | Pong, ctx: Context) -> None:
            calls.append(event)

    async with running(Strict, topology=topology(prefix)), amqp() as channel:
        await channel.default_exchange.publish(
            aio_pika.Message(body, type=type_), routing_key=f"{prefix}.work"
        )
        [dead] = await wait_for_messages(channel, f"{prefix}.work.dlq", 1)
        assert await count(channel, f"{prefix}.work.retry.1") == 0
    assert calls == []
    assert dead.body == body
    assert dead.headers["x-error-type"] == error_type
    assert dead.headers["x-attempt"] == 1


async def test_reject_goes_to_dlq_at_once(prefix: str) -> None:
    class Picky(Consumer):
        queue = f"{prefix}.work"
        retry = RetryPolicy(attempts=5, initial=5)

        async def handle(self, event: Ping, ctx: Context) -> None:
            raise Reject("order 17 does not exist")

    async with running(Picky, topology=topology(prefix)):
        await publish_ping(prefix, 17)
        async with amqp() as channel:
            [dead] = await wait_for_messages(channel, f"{prefix}.work.dlq", 1)
    assert dead.headers["x-error-type"] == "Reject"
    assert dead.headers["x-error-message"] == "order 17 does not exist"


async def test_timeout_is_retried(prefix: str) -> None:
    attempts: list[int] = []

    class Slow(Consumer):
        queue = f"{prefix}.work"
        timeout = 0.2
        retry = RetryPolicy(attempts=3, initial=0.1)

        async def handle(self, event: Ping, ctx: Context) -> None:
            attempts.append(ctx.attempt)
            if ctx.attempt == 1:
                await asyncio.sleep(5)

    async with running(Slow, topology=topology(prefix)) as worker:
        await publish_ping(prefix, 1)
        await eventually(lambda: worker.runners[0].stats.handled == 1, what="handled")
    assert attempts == [1, 2]
    assert worker.runners[0].stats.retried == 1


async def test_retry_exception_and_immediate_tries(prefix: str) -> None:
    calls: list[tuple[int, float]] = []

    class Steered(Consumer):
        queue = f"{prefix}.work"
        retry = RetryPolicy(attempts=2, initial=5, immediate=2, immediate_delay=0.01)

        async def handle(self, event: Ping, ctx: Context) -> None:
            calls.append((ctx.attempt, time.monotonic()))
            if ctx.attempt == 1 and len(calls) < 3:
                raise ConnectionResetError("blip")  # absorbed by the fast tries
            if ctx.attempt == 1:
                raise Retry("not yet", delay=0.2)  # skips fast tries; waits 0.2 s, not 5

    async with running(Steered, topology=topology(prefix)) as worker:
        await publish_ping(prefix, 1)
        await eventually(lambda: worker.runners[0].stats.handled == 1, what="handled")
    assert [a for a, _ in calls] == [1, 1, 1, 2]
    assert 0.2 <= calls[3][1] - calls[2][1] < 4


async def test_message_from_a_foreign_client_is_handled(prefix: str) -> None:
    got: list[tuple[int, int, str | None, object]] = []

    class Tolerant(Consumer):
        queue = f"{prefix}.work"

        async def handle(self, event: Ping, ctx: Context) -> None:
            got.append((event.n, ctx.attempt, ctx.event_type, dict(ctx.headers)))

    async with running(Tolerant, topology=topology(prefix)), amqp() as channel:
        # no type, no headers, no kanin envelope: what any AMQP client sends by default
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"n": 42}'), routing_key=f"{prefix}.work"
        )
        await eventually(lambda: len(got) == 1)
    assert got == [(42, 1, None, {})]


async def test_handler_publishes_with_correlation_and_causation(prefix: str) -> None:
    pongs: list[tuple[Context, Pong]] = []

    class Pinger(Consumer):
        queue = f"{prefix}.work"

        async def handle(self, event: Ping, ctx: Context) -> None:
            await ctx.publish(Pong(n=event.n), exchange="", routing_key=f"{prefix}.pongs")

    class Ponger(Consumer):
        queue = f"{prefix}.pongs"

        async def handle(self, event: Pong, ctx: Context) -> None:
            pongs.append((ctx, event))

    specs = Topology(queues=[QueueSpec(name=f"{prefix}.work"), QueueSpec(name=f"{prefix}.pongs")])
    async with running(Pinger, Ponger, topology=specs):
        [ping_id] = await publish_ping(prefix, 5)
        await eventually(lambda: len(pongs) == 1)
    ctx, pong = pongs[0]
    assert pong == Pong(n=5)
    assert ctx.causation_id == ping_id
    assert ctx.correlation_id == ping_id  # the first event of the flow
    assert ctx.message_id not in (None, ping_id)
    assert ctx.headers["x-event-version"] == 1
    assert ctx.headers["x-attempt"] == 1


async def test_unroutable_publish_raises(prefix: str) -> None:
    async with Publisher(settings()) as publisher:
        with pytest.raises(Unroutable, match="no queue"):
            await publisher.publish(Ping(n=1), exchange="", routing_key=f"{prefix}.nowhere")
        # the channel stays usable after a return
        async with amqp() as channel:
            await channel.declare_queue(f"{prefix}.here", durable=True)
        await publisher.publish(Ping(n=2), exchange="", routing_key=f"{prefix}.here")
        with pytest.raises(Unroutable):
            await publisher.publish(Ping(n=1), exchange="amq.topic", routing_key="nobody.listens")


async def test_publish_many_confirms_all_and_sets_the_envelope(prefix: str) -> None:
    async with amqp() as channel:
        await channel.declare_queue(f"{prefix}.many", durable=True)
        async with Publisher(settings(service_name="shop")) as publisher:
            ids = await publisher.publish_many(
                (Ping(n=i) for i in range(300)), exchange="", routing_key=f"{prefix}.many"
            )
        assert len(set(ids)) == 300
        messages = await wait_for_messages(channel, f"{prefix}.many", 300)
    first = messages[0]
    assert [json.loads(m.body)["n"] for m in messages] == list(range(300))
    assert first.content_type == "application/json"
    assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert (first.type, first.app_id, first.message_id) == ("test.ping", "shop", ids[0])
    assert first.correlation_id == ids[0]
    assert first.timestamp is not None
    assert first.headers == {"x-event-version": 1, "x-attempt": 1}


async def test_worker_declares_missing_queues_and_reports_queue_state(prefix: str) -> None:
    class Plain(Consumer):
        queue = f"{prefix}.plain"
        retry = RetryPolicy(attempts=2, initial=1)

        async def handle(self, event: Ping, ctx: Context) -> None:
            pass

    async with running(Plain), amqp() as channel:  # no topology file at all
        for name in (f"{prefix}.plain", f"{prefix}.plain.retry.1", f"{prefix}.plain.dlq"):
            assert await count(channel, name) == 0  # passive declare: it exists


async def test_settles_everything_when_prefetch_exceeds_concurrency(prefix: str) -> None:
    running_now: list[int] = []
    peak: list[int] = [0]
    done: list[int] = []

    class Bounded(Consumer):
        queue = f"{prefix}.work"
        prefetch = 20
        concurrency = 3

        async def handle(self, event: Ping, ctx: Context) -> None:
            running_now.append(event.n)
            peak[0] = max(peak[0], len(running_now))
            await asyncio.sleep(0.01)
            running_now.remove(event.n)
            done.append(event.n)

    async with running(Bounded, topology=topology(prefix)):
        async with Publisher(settings()) as publisher:
            await publisher.publish_many(
                (Ping(n=i) for i in range(100)), exchange="", routing_key=f"{prefix}.work"
            )
        await eventually(lambda: len(done) == 100)
        async with amqp() as channel:
            await eventually(lambda: True)
            assert await count(channel, f"{prefix}.work") == 0
    assert sorted(done) == list(range(100))
    assert peak[0] <= 3


async def test_drained_queue_leaves_nothing_unacked(prefix: str, admin) -> None:  # type: ignore[no-untyped-def]
    class Fast(Consumer):
        queue = f"{prefix}.work"
        prefetch = 100

        async def handle(self, event: Ping, ctx: Context) -> None:
            pass

    async with running(Fast, topology=topology(prefix)) as worker:
        async with Publisher(settings()) as publisher:
            await publisher.publish_many(
                (Ping(n=i) for i in range(2000)), exchange="", routing_key=f"{prefix}.work"
            )
        await eventually(lambda: worker.runners[0].stats.handled == 2000)
        channel = worker.channels[0]
        assert channel is not None
        await channel.drain()
        assert channel.acked == 2000
    async with amqp() as ch:
        assert await count(ch, f"{prefix}.work") == 0
    assert await drain_is_empty(prefix)


async def drain_is_empty(prefix: str) -> bool:
    async with amqp() as channel:
        return not await drain(channel, f"{prefix}.work")


async def test_publish_many_reports_an_unroutable_message_in_the_batch(prefix: str) -> None:
    async with amqp() as channel:
        await channel.declare_queue(f"{prefix}.ok", durable=True)
        async with Publisher(settings()) as publisher:
            publishing = await publisher.transport.publish_channel(5)
            assert publishing.batch_in_one_write  # type: ignore[attr-defined]
            with pytest.raises(Unroutable, match="nowhere"):
                await publisher.publish_many(
                    [Ping(n=1)], exchange="", routing_key=f"{prefix}.nowhere"
                )
            ids = await publisher.publish_many(
                [Ping(n=2), Ping(n=3)], exchange="", routing_key=f"{prefix}.ok"
            )
        messages = await wait_for_messages(channel, f"{prefix}.ok", 2)
    assert [m.message_id for m in messages] == ids


@pytest.mark.parametrize("dispatch", ["kanin", "aiormq"])
async def test_a_handler_cut_off_by_a_lost_connection_is_cancelled_and_its_message_redelivered(
    prefix: str, admin: BrokerAdmin, dispatch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    holding = asyncio.Event()

    class Hold(Consumer):
        queue = f"{prefix}.work"

        async def handle(self, event: Ping, ctx: Context) -> None:
            if not calls:
                calls.append("started")
                holding.set()
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    calls.append("cancelled")
                    raise
            calls.append(f"handled {event.n}, redelivered {ctx.redelivered}")

    service = f"{prefix}-svc"
    fast = dispatch == "kanin"  # else aiormq's own task store (its public path)
    async with running(
        Hold, topology=topology(prefix), service_name=service, fast_paths=fast
    ) as worker:
        await publish_ping(prefix, 5)
        await asyncio.wait_for(holding.wait(), 15)
        tracked = len(worker.channels[0].running)  # type: ignore[union-attr]
        assert tracked == (1 if dispatch == "kanin" else 0)
        assert await close_connections_soon(admin, service) == 1
        await eventually(lambda: len(calls) == 3, what="the message handled after the reconnect")
        stats = worker.runners[0].stats
        assert worker.reconnects == 1
    assert calls == ["started", "cancelled", "handled 5, redelivered True"]
    assert (stats.handled, stats.returned, stats.retried, stats.dead_lettered) == (1, 1, 0, 0)
    async with amqp() as channel:
        assert await count(channel, f"{prefix}.work") == 0


async def test_a_delivery_that_fails_outside_the_handler_is_logged_and_not_lost(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenStore:  # breaks the store contract: raises other than StoreUnavailable
        async def claim(self, key: str, lease: float) -> object:
            raise RuntimeError("store bug")

        async def close(self) -> None:
            pass

    class Quiet(Consumer):
        queue = f"{prefix}.work"

        async def handle(self, event: Ping, ctx: Context) -> None:
            raise AssertionError("not reached")

    worker = Worker([Quiet], settings(), topology=topology(prefix))
    worker.runners[0].store = BrokenStore()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR, logger="kanin.transport"):
        async with started(worker):
            await publish_ping(prefix, 1)
            await eventually(
                lambda: any("handling a delivery" in r.getMessage() for r in caplog.records),
                what="the failure logged",
            )
    (record,) = [r for r in caplog.records if "handling a delivery" in r.getMessage()]
    assert record.exc_info is not None and "store bug" in str(record.exc_info[1])
    async with amqp() as channel:  # never acked: back in the queue once the channel closed
        assert await count(channel, f"{prefix}.work") == 1

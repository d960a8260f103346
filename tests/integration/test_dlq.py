"""`kanin dlq` against the real RabbitMQ: failure groups, show, replay, purge, export."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from framework import Consumer, Context, Event, Publisher, Reject, RetryPolicy
from framework.ops import dlq
from framework.topology import QueueSpec, Topology
from framework.tracing import Tracing
from framework.transport import Transport, open_transport
from tests.conftest import AMQP_URL
from tests.integration.worker_kit import amqp, count, drain, eventually, running, settings

pytestmark = pytest.mark.integration

KANIN = str(Path(sys.executable).parent / "kanin")
NOT_UTF8 = b'{"n": "\xff\xfe"}'


class Order(Event, type="test.order", version=1):
    n: int


class PaymentTimeout(Exception):
    pass


class Shop:
    """A consumer of ``<prefix>.orders`` that fails until ``fixed``: orders divisible by 3
    are declined (Reject), the others time out (PaymentTimeout)."""

    def __init__(self, prefix: str, queue_type: str = "classic") -> None:
        self.queue = f"{prefix}.orders"
        self.dlq = f"{self.queue}.dlq"
        self.topology = Topology(
            queues=[QueueSpec(name=self.queue, type=queue_type, retry=RetryPolicy(attempts=1))]
        )
        self.fixed = False
        self.handled: list[tuple[int, int, dict[str, Any]]] = []
        shop = self

        class Orders(Consumer):
            queue = shop.queue

            async def handle(self, event: Order, ctx: Context) -> None:
                if not shop.fixed:
                    if event.n % 3 == 0:
                        raise Reject("declined")
                    raise PaymentTimeout(f"payment of order {event.n} timed out")
                shop.handled.append((event.n, ctx.attempt, dict(ctx.headers)))

        self.consumer = Orders

    async def fail(self, orders: int, provider: TracerProvider | None = None) -> dict[int, str]:
        """Publish orders 1..``orders`` (traced with ``provider``) and one body that is
        not UTF-8; wait until all are parked. Returns each order's message id."""
        async with running(self.consumer, topology=self.topology):
            async with Publisher(settings(), tracer_provider=provider) as publisher:
                ids = {
                    n: await publisher.publish(Order(n=n), exchange="", routing_key=self.queue)
                    for n in range(1, orders + 1)
                }
            async with amqp() as channel:
                message = aio_pika.Message(NOT_UTF8, type="test.order", message_id="not-utf8")
                await channel.default_exchange.publish(message, routing_key=self.queue)
                await eventually_count(channel, self.dlq, orders + 1)
        return ids


async def eventually_count(channel: Any, queue: str, expected: int) -> None:
    for _ in range(300):
        if await count(channel, queue) == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{queue} holds {await count(channel, queue)}, not {expected}")


async def connected() -> Transport:
    transport = open_transport(settings(), "kt-dlq")
    await transport.connect(0)
    return transport


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_replay_of_one_failure_group_sends_it_back_once_and_keeps_the_rest_in_order(
    prefix: str, queue_type: str
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    shop = Shop(prefix, queue_type)
    ids = await shop.fail(9, provider)
    transport = await connected()
    try:
        first = await dlq.show(transport, shop.dlq)
        order = [p.message_id for p in first]
        # showing changes nothing: the same messages, in the same order, twice
        assert len(order) == 10
        assert [p.message_id for p in await dlq.show(transport, shop.dlq)] == order
        overview = await dlq.overview(transport, shop.dlq)
        assert overview.depth == 10
        name = shop.consumer.consumer_name()  # module.Class, as x-failed-consumer holds it
        assert overview.groups[("PaymentTimeout", name)] == 6
        assert overview.groups[("Reject", name)] == 3
        undecodable = [p for p in first if p.idempotency_key == "not-utf8"]
        assert len(undecodable) == 1 and undecodable[0].delivery.body == NOT_UTF8
        assert overview.groups[undecodable[0].group] == 1
        assert overview.oldest is not None and overview.oldest <= overview.newest  # type: ignore[operator]

        tally = await dlq.replay(
            transport,
            settings(),
            shop.dlq,
            dlq.Selection.of(error_types=["PaymentTimeout"]),
            tracing=Tracing(provider),
        )
        assert (tally.total, tally.done, tally.skipped) == (10, 6, 4)
        timed_out = [p for p in first if p.error_type == "PaymentTimeout"]
        rest = [p.message_id for p in first if p.error_type != "PaymentTimeout"]
        assert [p.message_id for p in await dlq.show(transport, shop.dlq)] == rest
    finally:
        await transport.close()

    shop.fixed = True
    async with running(shop.consumer, topology=shop.topology):
        await eventually(lambda: len(shop.handled) >= 6, what="the replayed orders handled")
        await asyncio.sleep(0.5)  # a second copy would come now
    assert sorted(n for n, _, _ in shop.handled) == [n for n in range(1, 10) if n % 3]
    for n, attempt, headers in shop.handled:
        assert attempt == 1 and headers["x-attempt"] == 1
        assert headers["x-idempotency-key"] == ids[n]  # the id it was first published with
        assert headers["x-replay-count"] == 1 and "x-replayed-at" in headers
        assert not {"x-error-type", "x-error-message", "x-failed-at", "x-death"} & set(headers)

    # one replay span per message: a new trace linked to the one the message failed in
    spans = [s for s in exporter.get_finished_spans() if s.name == f"replay {shop.dlq}"]
    assert len(spans) == 6
    failed_traces = {p.trace_id for p in timed_out}
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["kanin.replay.trace_id"] in failed_traces
        assert [format(link.context.trace_id, "032x") for link in span.links] == [
            span.attributes["kanin.replay.trace_id"]
        ]
    replayed_traces = {h["traceparent"].split("-")[1] for _, _, h in shop.handled}
    assert replayed_traces == {format(s.context.trace_id, "032x") for s in spans}
    assert not replayed_traces & failed_traces


def kanin(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KANIN_BROKER_URL": AMQP_URL}
    return subprocess.run(
        [KANIN, *args], env=env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL, **kwargs,
    )  # fmt: skip


def start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "KANIN_BROKER_URL": AMQP_URL}
    return subprocess.Popen(
        [KANIN, *args], env=env, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


async def park(queue: str, bodies: list[bytes], **headers: Any) -> list[str]:
    """Put messages straight into ``queue`` (declared with its work queue), as kanin's
    DLQ copies look; returns their message ids in order."""
    ids = []
    async with amqp() as channel:
        await channel.declare_queue(queue, durable=True)
        await channel.declare_queue(queue.removesuffix(".dlq"), durable=True)
        for i, body in enumerate(bodies):
            message_id = f"m-{i}"
            message = aio_pika.Message(
                body,
                message_id=message_id,
                headers={
                    "x-error-type": "Boom" if i % 2 else "Bust",
                    "x-error-message": "it broke",
                    "x-failed-at": f"2026-11-30T10:{i % 60:02d}:00.000+00:00",
                    "x-failed-consumer": "Orders",
                    "x-attempt": 4,
                    "x-idempotency-key": f"key-{i}",
                    **headers,
                },
            )
            await channel.default_exchange.publish(message, routing_key=queue)
            ids.append(message_id)
    return ids


async def test_the_cli_lists_shows_and_replays_and_purges_only_with_yes(
    prefix: str, write: Callable[..., Path]
) -> None:
    queue = f"{prefix}.orders.dlq"
    ids = await park(queue, [b'{"n": %d}' % i for i in range(6)])
    file = write(f"queues:\n  - name: {prefix}.orders\n  - name: {prefix}.ghost\n")
    from_file = kanin("dlq", "list", "--topology", str(file))
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout.splitlines() == [  # in the file's order; groups biggest first
        f"{queue}: 6 messages, failed 2026-11-30T10:00:00Z .. 2026-11-30T10:05:00Z",
        "       3  Bust  in Orders",
        "       3  Boom  in Orders",
        f"{prefix}.ghost.dlq: not on the broker (kanin topology apply declares it)",
    ]

    listed = kanin("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    mine = [q for q in json.loads(listed.stdout) if q["queue"] == queue]
    assert mine[0]["depth"] == 6
    assert {(g["error_type"], g["count"]) for g in mine[0]["groups"]} == {("Boom", 3), ("Bust", 3)}
    assert mine[0]["oldest_failed_at"].startswith("2026-11-30T10:00:00")

    shown = kanin("dlq", "show", queue, "--error-type", "Boom", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [m["message_id"] for m in json.loads(shown.stdout)] == ids[1::2]
    text = kanin("dlq", "show", queue, "--limit", "1")
    assert "error        Bust: it broke" in text.stdout and '"n": 0' in text.stdout

    dry = kanin("dlq", "replay", queue, "--error-type", "Boom", "--dry-run")
    assert (
        dry.returncode == 0
        and f"would replay 3 messages from {queue} to {prefix}.orders" in dry.stdout
    )

    refused = kanin("dlq", "purge", queue)  # no terminal, no --yes
    assert refused.returncode == 2
    assert (
        refused.stderr.startswith("error: purge removes every message")
        and "--yes" in refused.stderr
    )
    async with amqp() as channel:
        assert await count(channel, queue) == 6

        moved = kanin("dlq", "replay", queue, "--message-id", "key-1", "--message-id", "m-3")
        assert moved.returncode == 0, moved.stderr
        assert f"replayed 2 of 6 messages in {queue} to {prefix}.orders" in moved.stdout
        back = await drain(channel, f"{prefix}.orders")
        assert [m.message_id for m in back] == ["m-1", "m-3"]
        assert back[0].headers["x-attempt"] == 1 and back[0].headers["x-idempotency-key"] == "key-1"

        purged = kanin("dlq", "purge", queue, "--error-type", "Bust", "--yes")
        assert purged.returncode == 0, purged.stderr
        assert [p.message_id for p in await drain(channel, queue)] == ["m-5"]

    missing = kanin("dlq", "show", f"{prefix}.nothing.dlq")
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        f"error: no queue '{prefix}.nothing.dlq' on the broker",
    )


async def test_edit_and_retry_replaces_one_body(prefix: str) -> None:
    queue = f"{prefix}.orders.dlq"
    await park(queue, [b'{"n": "x"}', b'{"n": 1}'])
    fixed = Path(os.environ.get("TMPDIR", "/tmp")) / f"{prefix}-fixed.json"
    fixed.write_bytes(b'{"n": 0}')
    try:
        result = kanin("dlq", "replay", queue, "--message-id", "m-0", "--data-file", str(fixed))
    finally:
        fixed.unlink()
    assert result.returncode == 0, result.stderr
    async with amqp() as channel:
        back = await drain(channel, f"{prefix}.orders")
        assert [(m.message_id, m.body) for m in back] == [("m-0", b'{"n": 0}')]
        assert [m.message_id for m in await drain(channel, queue)] == ["m-1"]


async def test_export_round_trips_bodies_and_remove_moves_them_out(
    prefix: str, tmp_path: Path
) -> None:
    queue = f"{prefix}.orders.dlq"
    bodies = [b'{"n": 1}', NOT_UTF8, b"\x00\xffbinary", '{"name": "Zoë"}'.encode()]
    await park(queue, bodies)
    out = tmp_path / "parked.jsonl"
    result = kanin("dlq", "export", queue, "--out", str(out))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]

    def body(record: dict[str, Any]) -> bytes:
        if record["body_encoding"] == "base64":
            return base64.b64decode(record["body"])
        return str(record["body"]).encode("utf-8")

    assert [body(r) for r in records] == bodies
    assert [r["body_encoding"] for r in records] == ["text", "base64", "base64", "text"]
    assert records[0]["headers"]["x-idempotency-key"] == "key-0"
    async with amqp() as channel:
        assert await count(channel, queue) == 4  # exporting alone removes nothing

        moved = kanin("dlq", "export", queue, "--out", str(out), "--remove")
        assert moved.returncode == 0, moved.stderr
        assert len(out.read_text(encoding="utf-8").splitlines()) == 4
        assert await count(channel, queue) == 0


async def test_a_replay_killed_midway_loses_nothing(prefix: str) -> None:
    queue, target = f"{prefix}.big.dlq", f"{prefix}.big"
    ids = await park(queue, [b'{"n": %d}' % i for i in range(2000)])
    process = start("dlq", "replay", queue, "--rate", "500/s")
    try:
        async with amqp() as channel:
            for _ in range(400):
                if await count(channel, target) >= 300:
                    break
                await asyncio.sleep(0.025)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            await asyncio.sleep(0.5)  # the broker gives back what the dead process held
            replayed = [m.message_id for m in await drain(channel, target)]
            parked = [m.message_id for m in await drain(channel, queue)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert 300 <= len(set(replayed)) < 2000  # killed mid-way
    assert Counter(replayed + parked).keys() == set(ids)  # nothing lost
    assert parked == [i for i in ids if i in set(parked)]  # what stayed is in order

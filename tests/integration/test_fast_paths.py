"""kanin's fast paths through its dependencies' internals, against their public paths.

Each fast path runs only on versions the suite has run it against; these tests force the
other branch (an "untested" version, or ``KANIN_FAST_PATHS=false``) and check that both
give the same results, and that the batch publish stays right when it is cancelled
halfway through its write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pamqp.commands import Basic

from framework import Consumer, Context, Event, Publisher, PublishFailed, Worker, versions
from framework.spans import lean_tracer
from framework.topology import QueueSpec, Topology
from framework.transport.amqp import AmqpPublishChannel, AmqpTransport
from framework.transport.consuming import AmqpConsumerChannel
from tests.integration.faults import FaultProxy
from tests.integration.worker_kit import amqp, eventually, settings, started, wait_for_messages

pytestmark = pytest.mark.integration


class Item(Event, type="test.item", version=1):
    n: int


def message(queue: str, n: int) -> tuple[str, str, bytes, Basic.Properties]:
    body = Item(n=n).to_json()
    return ("", queue, body, Basic.Properties(message_id=f"m-{n}", delivery_mode=2))


@pytest.mark.parametrize("how", ["cancelled", "timed out"])
async def test_a_batch_cut_off_before_its_write_leaves_later_confirms_right(
    prefix: str, how: str
) -> None:
    ok, full = f"{prefix}.ok", f"{prefix}.full"
    async with amqp() as channel:
        await channel.declare_queue(ok, durable=True)
        await channel.declare_queue(
            full, durable=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
        )
    async with FaultProxy() as proxy:
        transport = AmqpTransport(settings(broker_url=proxy.url()), f"{prefix}-fast")
        try:
            publishing = await transport.publish_channel(10)
            assert isinstance(publishing, AmqpPublishChannel) and publishing.batch_in_one_write
            await publishing.publish_batch([message(ok, 0)], within=10)
            raw: Any = publishing.channel
            tag_before = raw.delivery_tag
            # Fill the connection's frame queue: the broker reads nothing, one big publish
            # waits for the socket to drain, ten more wait behind it in the queue.
            connection = await transport.publishing.get(10)
            others = [await (await connection.channel()).get_underlay_channel() for _ in range(11)]
            proxy.stall("to_broker")
            blockers = [
                asyncio.create_task(
                    ch.basic_publish(b"x" * (32 << 20 if i == 0 else 10), routing_key=ok)
                )
                for i, ch in enumerate(others)
            ]
            await eventually(lambda: raw.write_queue.full(), what="a full frame queue")
            batch = [message(ok, n) for n in (1, 2, 3)]
            if how == "cancelled":
                writing = asyncio.create_task(publishing.publish_batch(batch, within=30))
                await asyncio.sleep(0.2)
                assert not writing.done()
                writing.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await writing
            else:
                with pytest.raises(PublishFailed, match="no confirm"):
                    await publishing.publish_batch(batch, within=0.2)
            assert raw.delivery_tag == tag_before  # the sequence numbers were taken back
            assert not set(raw.confirmations) - set(range(1, tag_before + 1))
            proxy.resume()
            await asyncio.wait_for(asyncio.gather(*blockers), 60)
            # Every later confirm resolves its own publish: a nack lands on the right one.
            await publishing.publish_batch([message(ok, n) for n in (4, 5, 6)], within=10)
            with pytest.raises(PublishFailed, match="nacked"):
                await publishing.publish_batch([message(ok, 7), message(full, 8)], within=10)
            await publishing.publish_batch([message(ok, 9)], within=10)
        finally:
            proxy.resume()
            await transport.close()
    async with amqp() as channel:
        got = await wait_for_messages(channel, ok, 17, within=30)
    ids = [m.message_id for m in got if m.message_id]
    assert [i for i in ids if i.startswith("m-")] == ["m-0", "m-4", "m-5", "m-6", "m-7", "m-9"]


@pytest.fixture
def untested(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Installed aiormq and OpenTelemetry SDK are versions the fast paths were not tested on."""
    for dist in ("aiormq", "opentelemetry-sdk"):
        monkeypatch.setitem(versions.TESTED, dist, ("0.0.1", "0.0.2"))
    monkeypatch.setattr(versions, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="kanin.versions"):
        yield


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def shape(self) -> list[tuple[str, str, dict[str, Any], str | None]]:
        """Each span's name, kind, attributes (ids and tags left out) and parent's name."""
        spans: list[ReadableSpan] = list(self.exporter.get_finished_spans())
        names = {s.context.span_id: s.name for s in spans if s.context}
        varying = {
            "messaging.message.id",
            "messaging.message.conversation_id",
            "messaging.rabbitmq.message.delivery_tag",
        }
        shapes = [
            (
                s.name,
                s.kind.name,
                {k: v for k, v in (s.attributes or {}).items() if k not in varying},
                names.get(s.parent.span_id) if s.parent else None,
            )
            for s in spans
        ]
        return sorted(shapes, key=repr)


async def run_flow(prefix: str, fast: bool) -> tuple[list[int], list[str], Worker, Spans]:
    """Publish a batch and a single event; a worker handles them all. Returns what was
    handled, the ids published, the worker and the spans."""
    queue = f"{prefix}.{'fast' if fast else 'public'}"
    handled: list[int] = []

    class Collect(Consumer):
        async def handle(self, event: Item, ctx: Context) -> None:
            handled.append(event.n)

    Collect.queue = queue
    spans = Spans()
    config = settings(fast_paths=fast, service_name=f"{prefix}-{fast}")
    worker = Worker(
        [Collect],
        config,
        topology=Topology(queues=[QueueSpec(name=queue)]),
        tracer_provider=spans.provider,
    )
    async with started(worker):
        async with Publisher(config, tracer_provider=spans.provider) as publisher:
            ids = await publisher.publish_many(
                [Item(n=n) for n in range(50)], exchange="", routing_key=queue
            )
            ids.append(await publisher.publish(Item(n=50), exchange="", routing_key=queue))
        await eventually(lambda: len(handled) == 51, what="51 handled")
    return sorted(handled), ids, worker, spans


async def test_an_untested_version_takes_the_public_paths_with_the_same_results(
    prefix: str, untested: None, caplog: pytest.LogCaptureFixture
) -> None:
    public = await run_flow(prefix, fast=True)  # fast allowed, but the versions are untested
    warnings = [r.getMessage() for r in caplog.records if r.name == "kanin.versions"]
    assert len(warnings) == 2, warnings  # one per dependency, once per process
    assert any(w.startswith(f"aiormq {versions.installed('aiormq')} is not") for w in warnings)
    sdk = versions.installed("opentelemetry-sdk")
    assert any(w.startswith(f"opentelemetry-sdk {sdk} is not") for w in warnings)
    assert public[2].tracing.lean is None
    versions.TESTED.update({"aiormq": ("0.0.0", "99"), "opentelemetry-sdk": ("0.0.0", "99")})
    fast = await run_flow(prefix, fast=True)
    # lean spans where this SDK allows them (1.40 and 1.41 always count spans: SDK spans)
    assert (fast[2].tracing.lean is not None) == (
        lean_tracer(fast[3].provider.get_tracer("t"), True) is not None
    )
    assert public[0] == fast[0] == list(range(51))
    assert len(public[1]) == len(fast[1]) == 51
    assert public[3].shape() == fast[3].shape()
    assert len(public[3].shape()) == 102  # a send and a process span per message


async def test_the_fast_paths_run_where_tested_and_not_when_set_off(prefix: str) -> None:
    queue = f"{prefix}.idle"
    async with amqp() as channel:
        await channel.declare_queue(queue, durable=True)
    for allowed in (True, False):
        expected = allowed and versions.is_tested("aiormq")
        transport = AmqpTransport(settings(fast_paths=allowed), f"{prefix}-{allowed}")
        try:
            await transport.connect(5)
            publishing = await transport.publish_channel(5)
            consuming = await transport.consumer_channel(queue, 1)
            assert isinstance(publishing, AmqpPublishChannel)
            assert isinstance(consuming, AmqpConsumerChannel)

            async def nothing(delivery: object) -> None:
                pass

            await consuming.start(nothing)
            assert publishing.batch_in_one_write is expected
            assert ("_on_deliver_frame" in vars(consuming.channel)) is expected
            await consuming.close()
        finally:
            await transport.close()

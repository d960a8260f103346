"""Spans of real publish/consume hops, recorded with an in-memory exporter, and exported
over OTLP/HTTP by a real `kanin run` configured only by OTEL_* variables."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from http.server import HTTPServer
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from framework import Consumer, Context, Event, Publisher, Reject, RetryPolicy, Worker
from framework.topology import QueueSpec, Topology
from tests.conftest import AMQP_URL
from tests.integration.apps.slow import Job
from tests.integration.otlp import Receiver, receiving
from tests.integration.worker_kit import EMPTY_TOPOLOGY, eventually, kill_tree, settings, started

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).parent / "kanin")


class Step(Event, type="test.step", version=1):
    n: int


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def named(finished: list[ReadableSpan], prefix: str) -> list[ReadableSpan]:
    return [s for s in finished if s.name.startswith(prefix)]


async def test_publish_a_publish_b_is_one_trace(
    prefix: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    done: list[int] = []

    class A(Consumer):
        queue = f"{prefix}.a"

        async def handle(self, event: Job, ctx: Context) -> None:
            await ctx.publish(Step(n=event.n), exchange="", routing_key=f"{prefix}.b")

    class B(Consumer):
        queue = f"{prefix}.b"

        async def handle(self, event: Step, ctx: Context) -> None:
            done.append(event.n)

    topology = Topology(queues=[QueueSpec(name=f"{prefix}.a"), QueueSpec(name=f"{prefix}.b")])
    worker = Worker([A, B], settings(), topology=topology, tracer_provider=provider)
    async with started(worker):
        async with Publisher(settings(), tracer_provider=provider) as publisher:
            message_id = await publisher.publish(Job(n=7), exchange="", routing_key=f"{prefix}.a")
        await eventually(lambda: done == [7], what="B handled")
        await eventually(lambda: len(exporter.get_finished_spans()) >= 4, what="4 spans")

    finished = list(exporter.get_finished_spans())
    (first_send,) = named(finished, f"send amq.default:{prefix}.a")
    (process_a,) = named(finished, f"process amq.default:{prefix}.a:{prefix}.a")
    (second_send,) = named(finished, f"send amq.default:{prefix}.b")
    (process_b,) = named(finished, f"process amq.default:{prefix}.b:{prefix}.b")
    assert len({s.context.trace_id for s in finished}) == 1  # one trace
    by_id = {s.context.span_id: s for s in finished}

    def chain(span: ReadableSpan) -> list[str]:
        names = []
        while span.parent is not None:
            span = by_id[span.parent.span_id]
            names.append(span.name)
        return names

    assert chain(process_b) == [second_send.name, process_a.name, first_send.name]
    assert (first_send.kind, process_a.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert (second_send.kind, process_b.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    # the consumer span links to the producer context it continues
    assert [link.context.span_id for link in process_a.links] == [first_send.context.span_id]
    assert [link.context.span_id for link in process_b.links] == [second_send.context.span_id]

    send = dict(first_send.attributes or {})
    assert send["messaging.system"] == "rabbitmq"
    assert send["messaging.operation.name"] == send["messaging.operation.type"] == "send"
    assert send["messaging.destination.name"] == ""
    assert send["messaging.rabbitmq.destination.routing_key"] == f"{prefix}.a"
    assert send["messaging.message.id"] == message_id
    assert send["messaging.message.conversation_id"] == message_id
    assert send["messaging.message.body.size"] == len(Job(n=7).to_json())

    process = dict(process_b.attributes or {})
    assert process["messaging.operation.name"] == process["messaging.operation.type"] == "process"
    assert process["messaging.rabbitmq.destination.routing_key"] == f"{prefix}.b"
    assert process["messaging.message.conversation_id"] == message_id  # the flow's first id
    assert process["messaging.rabbitmq.message.delivery_tag"] >= 1
    assert process["kanin.attempt"] == 1
    assert process_b.status.status_code is not StatusCode.ERROR


async def test_each_attempt_is_a_child_of_the_original_send_and_moves_are_events(
    prefix: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    attempts: list[int] = []

    class Flaky(Consumer):
        queue = f"{prefix}.flaky"
        retry = RetryPolicy(attempts=3, initial=0.1, backoff="fixed")

        async def handle(self, event: Job, ctx: Context) -> None:
            attempts.append(ctx.attempt)
            if ctx.attempt < 3:
                raise ValueError(f"attempt {ctx.attempt} fails")

    class Refuses(Consumer):
        queue = f"{prefix}.refuses"

        async def handle(self, event: Job, ctx: Context) -> None:
            raise Reject("not for us")

    topology = Topology(
        queues=[QueueSpec(name=f"{prefix}.flaky"), QueueSpec(name=f"{prefix}.refuses")]
    )
    worker = Worker([Flaky, Refuses], settings(), topology=topology, tracer_provider=provider)
    async with started(worker):
        async with Publisher(settings(), tracer_provider=provider) as publisher:
            await publisher.publish(Job(n=1), exchange="", routing_key=f"{prefix}.flaky")
            await publisher.publish(Job(n=2), exchange="", routing_key=f"{prefix}.refuses")
        await eventually(lambda: attempts == [1, 2, 3], what="3 attempts")
        stats = worker.runners[1].stats
        await eventually(lambda: stats.dead_lettered == 1, what="dead-lettered")
        await eventually(lambda: len(exporter.get_finished_spans()) >= 6, what="6 spans")

    finished = list(exporter.get_finished_spans())
    (send,) = named(finished, f"send amq.default:{prefix}.flaky")
    tries = sorted(
        named(finished, f"process amq.default:{prefix}.flaky:"),
        key=lambda s: (s.attributes or {}).get("kanin.attempt", 0),
    )
    assert [(s.attributes or {})["kanin.attempt"] for s in tries] == [1, 2, 3]
    for span in tries:
        assert span.context.trace_id == send.context.trace_id
        assert span.parent is not None and span.parent.span_id == send.context.span_id
    for number, span in enumerate(tries[:2], start=1):
        assert span.status.status_code is StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == "ValueError"
        (event,) = span.events
        assert event.name == "retry"
        assert (event.attributes or {})["kanin.attempt"] == number
        assert (event.attributes or {})["kanin.retry_queue"] == f"{prefix}.flaky.retry.{number}"
        assert "fails" in str((event.attributes or {})["kanin.reason"])
    assert tries[2].status.status_code is not StatusCode.ERROR and not tries[2].events

    (refused,) = named(finished, f"process amq.default:{prefix}.refuses")
    assert (refused.attributes or {})["error.type"] == "Reject"
    (event,) = refused.events
    assert event.name == "dead_letter"
    assert (event.attributes or {})["kanin.dlq"] == f"{prefix}.refuses.dlq"
    assert (event.attributes or {})["kanin.reason"] == "not for us"


async def test_tracing_off_records_nothing_and_still_works(
    prefix: str, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    _, exporter = spans
    seen: list[int] = []

    class Plain(Consumer):
        queue = f"{prefix}.plain"

        async def handle(self, event: Job, ctx: Context) -> None:
            seen.append(event.n)

    worker = Worker([Plain], settings(), topology=Topology(queues=[QueueSpec(name=Plain.queue)]))
    assert not worker.tracing.enabled
    async with started(worker):
        async with Publisher(settings()) as publisher:
            assert not publisher.tracing.enabled
            await publisher.publish(Job(n=1), exchange="", routing_key=Plain.queue)
        await eventually(lambda: seen == [1])
    assert exporter.get_finished_spans() == ()


@pytest.fixture
def otlp() -> Iterator[Receiver]:
    with receiving() as server:
        yield server


async def test_a_worker_process_exports_over_otlp_http_configured_by_env(
    prefix: str,
    tmp_path: Path,
    otlp: HTTPServer,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, exporter = spans
    queue = f"{prefix}.jobs"
    log = tmp_path / "handled.log"
    stderr = open(tmp_path / "stderr", "w", encoding="utf-8")  # noqa: SIM115, ASYNC230
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "KANIN_"))}
    process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for in a thread
        [KANIN, "run", "tests.integration.apps.slow"],
        cwd=ROOT,
        env={
            **env,
            "KANIN_BROKER_URL": AMQP_URL,
            "KANIN_TOPOLOGY": EMPTY_TOPOLOGY,
            "KANIN_TEST_QUEUE": queue,
            "KANIN_TEST_LOG": str(log),
            "KANIN_TEST_DELAY": "0",
            "OTEL_SERVICE_NAME": f"{prefix}-svc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )
    try:
        await eventually(lambda: "started on" in (tmp_path / "stderr").read_text(), within=30)
        async with Publisher(settings(), tracer_provider=provider) as publisher:
            for n in range(3):
                await publisher.publish(Job(n=n), exchange="", routing_key=queue)
        await eventually(lambda: log.exists() and len(log.read_text().splitlines()) == 3)
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 30)
    finally:
        kill_tree(process)  # type: ignore[arg-type]
        stderr.close()
    assert process.returncode == 0, (tmp_path / "stderr").read_text()[-2000:]

    assert set(otlp.paths) == {"/v1/traces"}
    exported = otlp.spans()
    process_spans = [span for _, span in exported if span.name.startswith("process ")]
    assert {service for service, _ in exported} == {f"{prefix}-svc"}
    assert len(process_spans) == 3
    sends = {s.context.trace_id for s in exporter.get_finished_spans()}
    for span in process_spans:
        assert span.name == f"process amq.default:{queue}:{queue}"
        assert span.kind == span.SPAN_KIND_CONSUMER
        # the worker process continued the traces this test started
        assert int.from_bytes(span.trace_id, "big") in sends

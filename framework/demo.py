"""Services on the embedded broker, traced to the terminal: what ``kanin demo`` runs.

Each service is a ``Worker`` of its own (with its own ``service.name``, as it would be
in production) on one ``memory://`` broker. Their spans go to a ``Recorder`` that prints
a line as each step ends; after the flows have settled (retry waits skipped by moving
the broker's clock), each flow's trace is printed as a waterfall tree.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from opentelemetry.context import Context as OtelContext
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider

from framework.consumer import Consumer
from framework.errors import ConfigError, KaninError
from framework.events import Event
from framework.publisher import Publisher
from framework.settings import Settings
from framework.testing import settle
from framework.topology.model import Topology
from framework.transport import Properties, embedded
from framework.transport.memory import MemoryBroker
from framework.waterfall import Step, flow_line, waterfall
from framework.worker import Worker


class Recorder(SpanProcessor):
    """Keeps every span of the demo's services with the broker clock at its start,
    and prints the flow line of each span as it ends."""

    def __init__(self, broker: MemoryBroker, out: TextIO) -> None:
        self.broker = broker
        self.out = out
        self.origin = broker.now()
        self.steps: list[Step] = []
        self.types: dict[str, str] = {}  # message id -> event type, seen on the broker
        self._started: dict[int, float] = {}
        broker.observers.append(self._observe)

    def provider(self, service: str) -> TracerProvider:
        """A tracer provider for ``service`` whose spans come here."""
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(self)
        return provider

    def _observe(self, exchange: str, routing_key: str, body: bytes, props: Properties) -> None:
        if props.message_id and props.message_type:
            self.types.setdefault(str(props.message_id), str(props.message_type))

    def on_start(self, span: Span, parent_context: OtelContext | None = None) -> None:
        if span.context is not None:
            self._started[span.context.span_id] = self.broker.now() - self.origin

    def on_end(self, span: ReadableSpan) -> None:
        at = self._started.pop(span.context.span_id, 0.0) if span.context else 0.0
        attributes = span.attributes or {}
        service = span.resource.attributes.get("service.name", "?")
        flow = attributes.get("messaging.message.conversation_id") or "-"
        step = Step(span, str(flow), str(service), at)
        self.steps.append(step)
        line = flow_line(step, self.types)
        if line is not None:
            print(line, file=self.out, flush=True)

    def flows(self) -> dict[str, list[Step]]:
        """The steps of each flow, in the order the flows began."""
        grouped: dict[str, list[Step]] = {}
        for step in sorted(self.steps, key=lambda s: s.at):
            grouped.setdefault(step.flow, []).append(step)
        return grouped


@dataclass
class Summary:
    """What the services did: counts over every consumer, and the dead-lettered ones."""

    handled: int = 0
    retried: int = 0
    dead_lettered: int = 0
    parked: dict[str, int] = field(default_factory=dict)  # DLQ -> messages in it

    def __str__(self) -> str:
        where = ", ".join(f"{q}: {n}" for q, n in self.parked.items()) or "none"
        return (
            f"{self.handled} messages handled, {self.retried} retried, "
            f"{self.dead_lettered} dead-lettered (parked in {where})"
        )


async def run_demo(
    services: Mapping[str, Sequence[type[Consumer]]],
    topology: Topology | None,
    source: str,
    flows: Mapping[str, Event],
    settings: Settings,
    out: TextIO,
) -> Summary:
    """Run ``services`` on a fresh embedded broker, publish each event of ``flows`` from
    ``source`` (its key becomes the flow's correlation id), print the steps as they
    happen and every flow's trace once nothing is left to do."""
    url = f"memory://demo-{uuid.uuid4().hex}"
    base = settings.model_copy(update={"broker_url": url, "http_port": None})
    broker = embedded.broker_for(url)
    recorder = Recorder(broker, out)
    providers = {name: recorder.provider(name) for name in [*services, source]}
    workers = [
        Worker(
            list(consumers),
            _named(base, name),
            topology=topology,
            tracer_provider=providers[name],
        )
        for name, consumers in services.items()
    ]
    try:
        for worker in workers:
            await worker.start()
        print(f"{'clock':>10}  {'flow':<12} {'service':<14} {'step':<14} event", file=out)
        async with Publisher(_named(base, source), tracer_provider=providers[source]) as pub:
            for flow, event in flows.items():
                await pub.publish(event, correlation_id=flow)
        try:
            await settle(broker, workers)
        except AssertionError as exc:  # a handler that never ends, or flows that never do
            raise KaninError(f"the demo did not finish: {exc}") from None
        for steps in recorder.flows().values():
            print(file=out)
            for line in waterfall(steps, recorder.types):
                print(line, file=out)
        return _summary(workers, broker)
    finally:
        for worker in workers:
            worker.stop()
            await worker.shutdown()
        for provider in providers.values():
            provider.shutdown()
        embedded.forget(url)


def _named(settings: Settings, service: str) -> Settings:
    return settings.model_copy(update={"service_name": service})


def _summary(workers: Sequence[Worker], broker: MemoryBroker) -> Summary:
    summary = Summary()
    for worker in workers:
        for runner in worker.runners:
            summary.handled += runner.stats.handled
            summary.retried += runner.stats.retried
            summary.dead_lettered += runner.stats.dead_lettered
            dlq = broker.queues.get(runner.spec.dlq)
            if dlq is not None and dlq.messages:
                summary.parked[dlq.name] = len(dlq.messages)
    return summary


def event_map(value: Any, origin: str) -> dict[str, Event]:
    """``value`` as the demo's flows: a mapping of flow name to ``Event``."""
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Event) for k, v in value.items()
    ):
        raise ConfigError(f"{origin} must return a mapping of flow name to Event")
    return dict(value)

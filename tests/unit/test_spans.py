"""kanin's lean spans export what the SDK's own spans would, and obey the provider."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, cast

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from framework.spans import LeanSpan, LeanTracer, link
from framework.tracing import _GETTER, Tracing

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


def lean_of(provider: TracerProvider) -> LeanTracer:
    """kanin's lean tracer for ``provider``, whether or not this SDK version gets it in
    use (on 1.40 and 1.41, which always count spans, kanin takes the SDK's spans): what it
    makes is compared with the SDK's on every version."""
    return LeanTracer(cast(SdkTracer, provider.get_tracer("kanin")))


def recorded(**provider_args: Any) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "t"}), **provider_args)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def start(
    lean: LeanTracer,
    name: str,
    kind: SpanKind,
    parent: otel_context.Context | None,
    attributes: dict[str, Any],
    links: tuple[Link, ...] = (),
) -> trace.Span:
    """``lean.start`` as kanin calls it: with the parent's span context read first."""
    remote = trace.get_current_span(parent).get_span_context()
    return lean.start(name, kind, parent, remote, attributes, links)


def exercise(span: trace.Span) -> None:
    """Everything kanin and a handler may do to a span, the same way on both kinds."""
    span.set_attribute("kanin.attempt", 2)
    span.set_attributes({"tags": ["a", "b"], "ratio": 0.5, "flag": True})
    span.set_attribute("bad", {"a": 1})  # type: ignore[arg-type]  # dropped, as the SDK does
    span.add_event("kanin.retry", {"kanin.attempt": 2, "kanin.reason": "ValueError"})
    span.add_link(trace.SpanContext(7, 8, is_remote=True), {"why": "fan-in"})
    span.update_name("process renamed")
    span.record_exception(ValueError("boom"))
    span.set_status(StatusCode.ERROR, "ValueError: boom")
    span.set_status(StatusCode.UNSET)  # ignored
    span.end()
    span.set_attribute("late", 1)  # ignored after end
    span.end()  # a second end is ignored too


def comparable(span: ReadableSpan) -> dict[str, Any]:
    def events() -> Iterator[tuple[str, dict[str, Any]]]:
        for event in span.events:
            attributes = dict(event.attributes or {})
            if "exception.stacktrace" in attributes:  # line numbers differ between callers
                attributes["exception.stacktrace"] = attributes["exception.stacktrace"].startswith(
                    "Traceback"
                )
            yield event.name, attributes

    assert span.context is not None and span.parent is not None
    return {
        "name": span.name,
        "kind": span.kind,
        "trace_id": span.context.trace_id,
        "flags": span.context.trace_flags,
        "remote": span.context.is_remote,
        "parent": span.parent,
        "attributes": dict(span.attributes or {}),
        "events": list(events()),
        "links": [(link.context, dict(link.attributes or {})) for link in span.links],
        "status": (span.status.status_code, span.status.description),
        "resource": span.resource.attributes,
        "scope": span.instrumentation_scope,
        "timed": span.start_time is not None and span.end_time is not None,
        "dropped": (span.dropped_attributes, span.dropped_events, span.dropped_links),
    }


def sdk_and_lean_spans(limits: SpanLimits | None = None) -> tuple[ReadableSpan, ReadableSpan]:
    """The same span made by the SDK and by kanin, the same things done to each, exported."""
    provider, exporter = recorded(span_limits=limits)
    parent = propagate.extract({"traceparent": TRACEPARENT})
    producer = trace.get_current_span(parent).get_span_context()
    attributes = {"messaging.system": "rabbitmq", "messaging.operation.type": "process", "a": "1"}
    sdk = provider.get_tracer("kanin").start_span(
        "process x", parent, SpanKind.CONSUMER, dict(attributes), (Link(producer),)
    )
    exercise(sdk)
    lean_tracer = lean_of(provider)
    lean = start(
        lean_tracer, "process x", SpanKind.CONSUMER, parent, dict(attributes), (link(producer),)
    )
    assert isinstance(lean, LeanSpan)
    exercise(lean)
    expected, got = exporter.get_finished_spans()
    assert got.context is not None and expected.context is not None
    assert got.context.span_id != expected.context.span_id
    return expected, got


def test_a_lean_span_exports_what_the_sdk_span_exports() -> None:
    expected, got = sdk_and_lean_spans()
    assert comparable(got) == comparable(expected)
    assert got.to_json() and got.attributes["kanin.attempt"] == 2


def test_a_lean_span_encodes_to_the_same_otlp_span() -> None:
    def encoded(span: ReadableSpan) -> Any:
        (resource,) = encode_spans([span]).resource_spans
        (scope,) = resource.scope_spans
        (pb,) = scope.spans
        pb.span_id, pb.start_time_unix_nano, pb.end_time_unix_nano = b"", 0, 0
        for event in pb.events:
            event.time_unix_nano = 0
        return resource.resource, scope.scope, pb

    expected, got = sdk_and_lean_spans()
    assert encoded(got) == encoded(expected)
    expected, got = sdk_and_lean_spans(SpanLimits(max_span_attributes=2, max_links=1))
    assert encoded(got) == encoded(expected)


def test_a_root_span_gets_new_ids_and_the_same_flags() -> None:
    provider, exporter = recorded()
    provider.get_tracer("kanin").start_span("send x", kind=SpanKind.PRODUCER).end()
    lean = lean_of(provider)
    assert lean is not None
    start(lean, "send x", SpanKind.PRODUCER, None, {}).end()
    expected, got = exporter.get_finished_spans()
    assert got.parent is None and expected.parent is None
    assert got.context is not None and expected.context is not None
    assert got.context.trace_id != expected.context.trace_id
    assert got.context.trace_flags == expected.context.trace_flags


def test_the_provider_sampler_decides() -> None:
    provider, exporter = recorded(sampler=ALWAYS_OFF)
    lean = lean_of(provider)
    assert lean is not None
    span = start(lean, "process x", SpanKind.CONSUMER, None, {})
    assert not span.is_recording() and span.get_span_context().is_valid
    span.end()
    # a sampled remote parent wins over a ratio of 0 under ParentBased, as in the SDK
    provider, exporter = recorded(sampler=ParentBased(TraceIdRatioBased(0)))
    lean = lean_of(provider)
    assert lean is not None
    start(lean, "a", SpanKind.CONSUMER, propagate.extract({"traceparent": TRACEPARENT}), {}).end()
    start(lean, "b", SpanKind.CONSUMER, otel_context.Context(), {}).end()
    assert [s.name for s in exporter.get_finished_spans()] == ["a"]


class RecordOnly(Sampler):
    """Records every span without sampling it (a processor sees it, exporters do not)."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY, {"decided": "here"})

    def get_description(self) -> str:
        return "RecordOnly"


def parents() -> Iterator[tuple[str, otel_context.Context | None]]:
    """Every kind of parent a sampler tells apart."""
    yield "root", otel_context.Context()
    for flags in ("01", "00"):
        remote = f"00-{TRACE_ID}-b7ad6b7169203331-{flags}"
        yield f"remote {flags}", propagate.extract({"traceparent": remote})
        yield (
            f"remote {flags} with state",
            propagate.extract({"traceparent": remote, "tracestate": "vendor=1"}),
        )
        local = trace.SpanContext(
            int(TRACE_ID, 16), 7, is_remote=False, trace_flags=TraceFlags(int(flags)),
            trace_state=TraceState([("local", "2")]),
        )  # fmt: skip
        yield f"local {flags}", trace.set_span_in_context(trace.NonRecordingSpan(local))
    yield "current (none)", None


@pytest.mark.parametrize(
    "sampler",
    [DEFAULT_ON, ALWAYS_ON, ALWAYS_OFF, ParentBased(ALWAYS_ON), RecordOnly()],
    ids=["default", "always_on", "always_off", "parentbased", "record_only"],
)
def test_a_lean_span_is_sampled_as_the_sdk_samples(sampler: Sampler) -> None:
    # DEFAULT_ON and ALWAYS_ON are decided without a call into the sampler: same result
    provider, exporter = recorded(sampler=sampler)
    lean = lean_of(provider)
    assert lean is not None
    for name, parent in parents():
        sdk = provider.get_tracer("kanin").start_span(name, parent, SpanKind.CONSUMER, {"a": 1})
        ours = start(lean, name, SpanKind.CONSUMER, parent, {"a": 1})
        for span in (sdk, ours):
            assert span.get_span_context().is_valid, name
        expected, got = sdk.get_span_context(), ours.get_span_context()
        assert got.trace_flags == expected.trace_flags, name
        assert got.trace_state == expected.trace_state, name
        assert (got.trace_id == expected.trace_id) == (name != "root" and parent is not None)
        assert ours.is_recording() == sdk.is_recording(), name
        if sdk.is_recording():
            assert isinstance(sdk, ReadableSpan) and isinstance(ours, ReadableSpan)
            assert ours.attributes == sdk.attributes and ours.parent == sdk.parent, name
        sdk.end()
        ours.end()
    exported = [span.name for span in exporter.get_finished_spans()]
    assert exported[::2] == exported[1::2]  # the SDK's and kanin's, in pairs


@pytest.mark.parametrize(
    "limits",
    [
        SpanLimits(max_span_attributes=2, max_events=1, max_links=1),
        SpanLimits(max_span_attribute_length=3, max_event_attributes=1, max_attribute_length=2),
    ],
)
def test_the_provider_limits_apply_as_in_the_sdk(limits: SpanLimits) -> None:
    expected, got = sdk_and_lean_spans(limits)
    assert comparable(got) == comparable(expected)
    assert got.dropped_attributes or len(got.attributes["messaging.system"]) == 3  # type: ignore[index,arg-type]


def test_processors_see_the_span_start() -> None:
    class Stamp(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            span.set_attribute("stamped", True)

    provider, exporter = recorded()
    provider.add_span_processor(Stamp())
    lean = lean_of(provider)
    assert lean is not None
    start(lean, "x", SpanKind.CONSUMER, None, {}).end()
    (got,) = exporter.get_finished_spans()
    assert got.attributes == {"stamped": True}


def test_a_provider_that_is_not_the_sdk_keeps_its_own_spans() -> None:
    tracing = Tracing(trace.NoOpTracerProvider())
    assert tracing.enabled and tracing.lean is None

    class Delivery:
        headers: ClassVar = {"traceparent": TRACEPARENT}
        properties = type("P", (), {"message_id": "m", "correlation_id": None})()
        exchange, routing_key, delivery_tag, body = "ex", "rk", 1, b"{}"

    with tracing.process(Delivery(), "q", 1) as span:
        assert span is not None and not span.is_recording()


def default_propagators() -> CompositePropagator:
    return CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


HEADERS = [
    {},
    {"traceparent": TRACEPARENT},
    {"traceparent": TRACEPARENT.encode()},
    {"traceparent": TRACEPARENT.replace("-01", "-00")},
    {"traceparent": TRACEPARENT.upper()},
    {"traceparent": f"00-{'0' * 32}-b7ad6b7169203331-01"},
    {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"},
    {"traceparent": TRACEPARENT.replace("00-", "ff-", 1)},
    {"traceparent": TRACEPARENT.replace("00-", "01-", 1) + "-more"},
    {"traceparent": TRACEPARENT + "-more"},
    {"traceparent": "garbage"},
    {"traceparent": 42},
    {"traceparent": TRACEPARENT, "tracestate": "vendor=1"},
    {"traceparent": TRACEPARENT, "baggage": "user=alice"},
]


@pytest.mark.parametrize("headers", HEADERS, ids=range(len(HEADERS)))
def test_kanin_reads_a_traceparent_as_the_w3c_propagator_does(headers: dict[str, Any]) -> None:
    provider, _ = recorded()
    tracing = Tracing(provider)
    expected = default_propagators().extract(headers, getter=_GETTER)
    got, remote = tracing._extract(headers)
    assert tracing._w3c  # the global propagator is OpenTelemetry's default here
    assert list(got) == list(expected)
    assert remote == trace.get_current_span(got).get_span_context()
    assert remote == trace.get_current_span(expected).get_span_context()
    assert baggage.get_all(got) == baggage.get_all(expected)


def test_a_configured_propagator_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    class Recording(TraceContextTextMapPropagator):
        def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
            calls.append(carrier)
            return super().extract(carrier, context, getter)

    provider, _ = recorded()
    tracing = Tracing(provider)
    tracing._extract({"traceparent": TRACEPARENT})
    previous = propagate.get_global_textmap()
    propagate.set_global_textmap(Recording())
    try:
        context, remote = tracing._extract({"traceparent": TRACEPARENT})
    finally:
        propagate.set_global_textmap(previous)
    assert calls == [{"traceparent": TRACEPARENT}]
    assert f"{trace.get_current_span(context).get_span_context().trace_id:032x}" == TRACE_ID
    assert f"{remote.trace_id:032x}" == TRACE_ID


def test_a_tracer_the_configurator_disabled_exports_nothing_from_kanin() -> None:
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    if not hasattr(sdk, "_disable_tracer_configurator"):
        pytest.skip("this SDK version has no tracer configurator (added in 1.40)")
    provider, exporter = recorded()
    tracing = Tracing(provider)
    lean = lean_of(provider)
    carrier = {"traceparent": TRACEPARENT}
    delivery = type("D", (), {"headers": carrier, "properties": type("P", (), {
        "message_id": "m", "correlation_id": "c"})(), "exchange": "x", "routing_key": "k",
        "delivery_tag": 1, "body": b"{}"})()  # fmt: skip
    with tracing.process(delivery, "q", 1):
        pass
    assert len(exporter.get_finished_spans()) == 1
    provider._set_tracer_configurator(tracer_configurator=sdk._disable_tracer_configurator)
    exporter.clear()
    with tracing.process(delivery, "q", 1) as span:
        assert span is not None and not span.is_recording()
        assert span.get_span_context().trace_id == int(TRACE_ID, 16)  # the parent's, as the SDK
    properties = type("P", (), {"message_id": "m", "correlation_id": "c", "headers": {}})()
    with tracing.send("x", "k", properties, 2):
        pass
    parent = propagate.extract(carrier)
    span = start(lean, "process x", SpanKind.CONSUMER, parent, {})
    assert not span.is_recording()
    assert span.get_span_context().trace_id == int(TRACE_ID, 16)
    span.end()
    assert exporter.get_finished_spans() == ()


def test_with_the_sdk_span_metrics_on_kanin_spans_are_the_sdk_own_and_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics_sdk = pytest.importorskip("opentelemetry.sdk.metrics")
    reader_module = pytest.importorskip("opentelemetry.sdk.metrics.export")
    if not hasattr(pytest.importorskip("opentelemetry.sdk.trace"), "_tracer_metrics"):
        pytest.skip("this SDK version has no span metrics (added in 1.40)")
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    reader = reader_module.InMemoryMetricReader()
    meters = metrics_sdk.MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    provider = TracerProvider(meter_provider=meters)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    assert tracing.lean is None  # lean spans would not feed the metrics
    properties = type("P", (), {"message_id": "m", "correlation_id": "c", "headers": {}})()
    for _ in range(3):
        with tracing.send("x", "k", properties, 2):
            pass
    assert len(exporter.get_finished_spans()) == 3
    data = reader.get_metrics_data()
    started = [
        point.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "otel.sdk.span.started"
        for point in metric.data.data_points
    ]
    assert sum(started) == 3

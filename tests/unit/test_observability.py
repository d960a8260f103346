"""Tracing configuration from OTEL_* variables, header extraction, log lines, histograms."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from framework import Consumer, Context, Event, RetryPolicy
from framework.errors import ConfigError
from framework.histogram import Histogram
from framework.logs import TEXT_FORMAT, JsonFormatter, TraceIds
from framework.testing import TestKit
from framework.tracing import _GETTER, Tracing, provider_from_env

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def no_otel_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (
        "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SERVICE_NAME",
    ):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def exporters(provider: TracerProvider) -> list[str]:
    processors = provider._active_span_processor._span_processors
    found = []
    for processor in processors:  # the exporter's attribute moved between SDK versions
        exporter = getattr(processor, "span_exporter", None)
        if exporter is None:
            exporter = processor._batch_processor._exporter
        found.append(type(exporter).__module__)
    return found


def test_no_otel_variables_means_tracing_off(no_otel_env: pytest.MonkeyPatch) -> None:
    assert provider_from_env("svc") is None
    assert Tracing(None).process(object(), "q", 1).__enter__() is None  # no work at all


def test_an_otlp_endpoint_turns_on_http_protobuf_export(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    provider = provider_from_env("shop-inventory")
    assert provider is not None
    assert exporters(provider) == ["opentelemetry.exporter.otlp.proto.http.trace_exporter"]
    assert provider.resource.attributes["service.name"] == "shop-inventory"
    provider.shutdown()


def test_grpc_protocol_and_service_name_from_env(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    no_otel_env.setenv("OTEL_SERVICE_NAME", "from-env")
    provider = provider_from_env("kanin")
    assert provider is not None
    assert exporters(provider) == ["opentelemetry.exporter.otlp.proto.grpc.trace_exporter"]
    assert provider.resource.attributes["service.name"] == "from-env"
    provider.shutdown()


def test_console_and_disabled(no_otel_env: pytest.MonkeyPatch) -> None:
    provider = provider_from_env("svc", console=True)
    assert provider is not None
    assert exporters(provider) == ["opentelemetry.sdk.trace.export"]
    provider.shutdown()
    no_otel_env.setenv("OTEL_SDK_DISABLED", "true")
    assert provider_from_env("svc", console=True) is None


def test_unknown_exporter_or_protocol_is_a_config_error(no_otel_env: pytest.MonkeyPatch) -> None:
    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ConfigError, match="unknown exporter 'zipkin'"):
        provider_from_env("svc")
    no_otel_env.setenv("OTEL_TRACES_EXPORTER", "otlp")
    no_otel_env.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigError, match="'http/json' is not supported"):
        provider_from_env("svc")


@pytest.mark.parametrize("value", [TRACEPARENT, TRACEPARENT.encode()])
def test_traceparent_as_str_or_bytes_is_extracted(value: str | bytes) -> None:
    context = propagate.extract({"traceparent": value}, getter=_GETTER)
    span_context = trace.get_current_span(context).get_span_context()
    assert format(span_context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert _GETTER.get({"x": b"\xff"}, "x") == ["\ufffd"]  # undecodable bytes do not crash


def record_with(formatter: logging.Formatter, message: str) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceIds())
    handler.setFormatter(formatter)
    logger = logging.getLogger("kanin.test.logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(message, extra={"queue": "inventory.reserve"})
    finally:
        logger.removeHandler(handler)
    return stream.getvalue()


def test_json_lines_carry_the_trace_and_span_ids() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("process") as span:
        line = json.loads(record_with(JsonFormatter(), "attempt 1 failed"))
    context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert (line["level"], line["logger"], line["message"]) == (
        "WARNING", "kanin.test.logs", "attempt 1 failed",
    )  # fmt: skip
    assert line["queue"] == "inventory.reserve"
    outside = json.loads(record_with(JsonFormatter(), "consumer started"))
    assert outside["trace_id"] is None and outside["span_id"] is None


def test_text_lines_show_the_trace_id_when_there_is_one() -> None:
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("process") as span:
        text = record_with(logging.Formatter(TEXT_FORMAT), "failed")
    assert f"trace_id={span.get_span_context().trace_id:032x}" in text
    assert "trace_id" not in record_with(logging.Formatter(TEXT_FORMAT), "started")


def test_send_span_injects_string_headers() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    class Props:
        message_id, correlation_id, headers = "m1", "c1", None

    props = Props()
    with Tracing(provider).send("shop.events", "order.placed", props, 12):
        pass
    (span,) = exporter.get_finished_spans()
    assert span.name == "send shop.events:order.placed"
    assert isinstance(props.headers, dict)
    assert all(isinstance(v, str) for v in props.headers.values())
    assert props.headers["traceparent"].split("-")[2] == f"{span.context.span_id:016x}"


def test_histogram_buckets_are_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.5, 0.7, 3.0):
        h.observe(value)
    assert h.buckets() == [("0.1", 1), ("1.0", 3), ("+Inf", 4)]
    assert h.total == pytest.approx(4.25)


class Always(Event, type="test.always", version=1):
    n: int


class Failing(Consumer):
    queue = "flow.work"
    retry = RetryPolicy(attempts=2, initial=0.1)

    async def handle(self, event: Always, ctx: Context) -> None:
        ctx.logger.info("trying %d", event.n)
        raise RuntimeError("always")


def captured(fmt: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TraceIds())
    handler.setFormatter(fmt)
    return handler, stream


async def test_one_grep_for_the_published_id_finds_every_line_of_its_flow() -> None:
    text, text_out = captured(logging.Formatter(TEXT_FORMAT))
    data, json_out = captured(JsonFormatter())
    root = logging.getLogger("kanin")
    root.addHandler(text)
    root.addHandler(data)
    old_level = root.level
    root.setLevel(logging.INFO)
    try:
        async with TestKit(Failing) as kit:
            message_id = await kit.publish(Always(n=1), exchange="", routing_key="flow.work")
            await kit.settle()
    finally:
        root.removeHandler(text)
        root.removeHandler(data)
        root.setLevel(old_level)
    lines = [line for line in text_out.getvalue().splitlines() if message_id in line]
    assert [line.split(": ", 1)[0].split()[-1] for line in lines] == [
        "kanin.consumer.Failing",  # handler's own line, attempt 1
        "kanin.consumer.Failing",  # attempt 1 failed; retrying
        "kanin.consumer.Failing",  # handler's own line, attempt 2
        "kanin.consumer.Failing",  # dead-lettered
    ], text_out.getvalue()
    assert all(f"[flow={message_id} key={message_id}]" in line for line in lines)
    records = [json.loads(line) for line in json_out.getvalue().splitlines()]
    about = [r for r in records if r["flow_id"] == message_id]
    assert len(about) == 4 and {r["idempotency_key"] for r in about} == {message_id}
    assert "dead-lettered" in about[-1]["message"]

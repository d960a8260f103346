"""Spans for every publish and every handled message, as one trace across services.

``send <exchange>:<routing_key>`` (PRODUCER) wraps a publish and writes the W3C context
into the message headers; ``process <exchange>:<routing_key>:<queue>`` (CONSUMER) wraps
the whole handling of a delivery, idempotency check and settlement included. Its parent
is the context extracted from the headers, so Jaeger shows the flow as one trace, and it
links to that context as the messaging conventions ask. A handler's publishes are
children of its process span. Retry and DLQ moves keep the headers they came with, so
every attempt is a child of the original send, and each move is an event on the span.

Off (no provider) means every call returns a shared no-op context manager at once.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, cast

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util.types import AttributeValue

from framework.errors import ConfigError
from framework.headers import text

if TYPE_CHECKING:  # the SDK (and kanin's spans, made with it) load only when tracing is on
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

_OFF: AbstractContextManager[None] = nullcontext()


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads W3C headers as any AMQP client sent them: text, or bytes to decode."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = text(carrier.get(key))
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


class Tracing:
    """Makes kanin's spans with ``provider``'s tracer; does nothing when ``provider`` is None."""

    def __init__(self, provider: trace.TracerProvider | None, fast: bool = True) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer = provider.get_tracer("kanin") if provider is not None else None
        # The SDK's tracer gets lean spans (framework.spans) where they may run; any
        # other keeps its own. ``fast``: KANIN_FAST_PATHS.
        self.fast = fast
        self.lean = None
        self._link = _no_link
        if self.tracer is not None:
            from framework.spans import lean_tracer, link

            self.lean = lean_tracer(self.tracer, fast)
            self._link = link
        self._textmap: object = None  # the global propagator last seen, and whether it
        self._w3c = False  # is OpenTelemetry's default

    @classmethod
    def default(cls, provider: trace.TracerProvider | None = None, fast: bool = True) -> Tracing:
        """``provider``, else the application's global SDK provider if it set one, else off."""
        if provider is None:
            current = trace.get_tracer_provider()
            sdk = sys.modules.get("opentelemetry.sdk.trace")  # not loaded: not an SDK provider
            provider = (
                current if sdk is not None and isinstance(current, sdk.TracerProvider) else None
            )
        return cls(provider, fast)

    def send(
        self, exchange: str, routing_key: str, properties: Any, body_size: int
    ) -> AbstractContextManager[Span | None]:
        """A PRODUCER span around one publish; its context goes into ``properties.headers``."""
        if self.tracer is None:
            return _OFF
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": exchange,
            "messaging.message.id": str(properties.message_id or ""),
            "messaging.message.conversation_id": str(properties.correlation_id or ""),
            "messaging.message.body.size": body_size,
        }
        if routing_key:
            attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
        span = self._start(
            f"send {exchange or 'amq.default'}:{routing_key}",
            SpanKind.PRODUCER,
            None,
            trace.get_current_span().get_span_context(),
            attributes,
            (),
        )
        active = _Active(span)
        if properties.headers is None:
            properties.headers = {}
        propagate.inject(properties.headers, context=active.context)
        return active

    def process(
        self, delivery: Any, queue: str, attempt: int
    ) -> AbstractContextManager[Span | None]:
        """A CONSUMER span around the handling of ``delivery``; current while it lasts."""
        if self.tracer is None:
            return _OFF
        parent, producer = self._extract(delivery.headers)
        properties = delivery.properties
        exchange, routing_key = delivery.exchange, delivery.routing_key
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": exchange,
            "messaging.rabbitmq.message.delivery_tag": delivery.delivery_tag,
            "messaging.message.body.size": len(delivery.body),
            "kanin.attempt": attempt,
        }
        if routing_key:
            attributes["messaging.rabbitmq.destination.routing_key"] = routing_key
        if properties.message_id:
            attributes["messaging.message.id"] = str(properties.message_id)
        if properties.correlation_id:
            attributes["messaging.message.conversation_id"] = str(properties.correlation_id)
        span = self._start(
            f"process {exchange or 'amq.default'}:{routing_key}:{queue}",
            SpanKind.CONSUMER,
            parent,
            producer,
            attributes,
            (self._link(producer),) if producer.is_valid else (),
        )
        return _Active(span)

    def replay(
        self, queue: str, target: str, failed: Mapping[str, Any], properties: Any, body_size: int
    ) -> AbstractContextManager[Span | None]:
        """A PRODUCER span ``replay <queue>`` around sending a parked message back to
        ``target``: the root of a new trace, linked to the trace the message failed in
        (whose id it also records, to search by), and whose context replaces that one in
        ``properties.headers``."""
        if self.tracer is None:
            return _OFF
        _, earlier = self._extract(failed)
        attributes: dict[str, AttributeValue] = {
            "messaging.system": "rabbitmq",
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
            "messaging.destination.name": "",
            "messaging.rabbitmq.destination.routing_key": target,
            "messaging.message.id": str(properties.message_id or ""),
            "messaging.message.body.size": body_size,
            "kanin.replay.queue": queue,
        }
        if earlier.is_valid:
            attributes["kanin.replay.trace_id"] = format(earlier.trace_id, "032x")
        span = self._start(
            f"replay {queue}",
            SpanKind.PRODUCER,
            otel_context.Context(),
            INVALID_SPAN_CONTEXT,
            attributes,
            (self._link(earlier),) if earlier.is_valid else (),
        )
        active = _Active(span)
        headers = properties.headers
        for name in ("traceparent", "tracestate"):
            headers.pop(name, None)
        propagate.inject(headers, context=active.context)
        return active

    def _extract(self, headers: Mapping[str, Any]) -> tuple[otel_context.Context, SpanContext]:
        """The producer's context in ``headers`` and its span context, by the global
        propagator. Under the default W3C propagators, a lone version-00 ``traceparent``
        is read here directly: the same context, for about half the cost."""
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:
            from framework.spans import is_w3c_default

            self._textmap, self._w3c = textmap, is_w3c_default(textmap, self.fast)
        if self._w3c and "tracestate" not in headers and "baggage" not in headers:
            value = text(headers.get("traceparent"))
            if value is None:
                return otel_context.Context(), INVALID_SPAN_CONTEXT
            match = _TRACEPARENT.fullmatch(value)
            if match is not None and match[1] != _ZERO_TRACE and match[2] != _ZERO_SPAN:
                remote = SpanContext(
                    int(match[1], 16),
                    int(match[2], 16),
                    is_remote=True,
                    trace_flags=TraceFlags(int(match[3], 16)),
                )
                span = NonRecordingSpan(remote)
                return trace.set_span_in_context(span, otel_context.Context()), remote
        context = textmap.extract(headers, getter=_GETTER)
        return context, trace.get_current_span(context).get_span_context()

    def _start(
        self,
        name: str,
        kind: SpanKind,
        parent: otel_context.Context | None,
        above: SpanContext,
        attributes: dict[str, AttributeValue],
        links: tuple[Link, ...],
    ) -> Span:
        """A span under ``parent`` (None: the current context); ``above`` is the span
        context of that parent."""
        if self.lean is not None:
            return self.lean.start(name, kind, parent, above, attributes, links)
        tracer = cast(trace.Tracer, self.tracer)  # the callers return early when off
        return tracer.start_span(
            name,
            context=parent,
            kind=kind,
            links=links,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )


def _no_link(context: SpanContext) -> Link:  # pragma: no cover - tracing off makes no spans
    raise RuntimeError("no links without a tracer")


class _Active:
    """A started span, made current for the ``with`` block and ended after it; an
    exception leaving the block marks it failed. (A class, not a generator: this runs
    once per message.)"""

    __slots__ = ("context", "span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.context = trace.set_span_in_context(span)
        self.token: object = None

    def __enter__(self) -> Span:
        self.token = otel_context.attach(self.context)
        return self.span

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            failed(self.span, exc)
        otel_context.detach(self.token)  # type: ignore[arg-type]
        self.span.end()


def failed(span: Span | None, exc: BaseException, error_type: str | None = None) -> None:
    """Mark ``span`` failed: ``error.type`` and an error status (the message, never a body)."""
    if span is None or not span.is_recording():
        return
    name = error_type or type(exc).__name__
    span.set_attribute("error.type", name)
    span.set_status(Status(StatusCode.ERROR, f"{name}: {str(exc)[:200]}"))


def current() -> Span | None:
    """The span handling this message, if tracing records one."""
    span = trace.get_current_span()
    return span if span.is_recording() else None


def provider_from_env(service_name: str, console: bool = False) -> TracerProvider | None:
    """A provider configured by the standard ``OTEL_*`` variables, or None (tracing off).

    Tracing is on when an OTLP endpoint or ``OTEL_TRACES_EXPORTER`` is set, or with
    ``console``. ``OTEL_SERVICE_NAME`` wins over kanin's service name; the sampler comes
    from ``OTEL_TRACES_SAMPLER``; ``OTEL_SDK_DISABLED=true`` turns it all off.
    """
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names and (
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    ):
        names = ["otlp"]
    exporters = [_exporter(name) for name in names if name != "none"]
    if console:
        exporters.append(ConsoleSpanExporter())
    if not exporters:
        return None
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter(name: str) -> SpanExporter:
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console, none)")
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            raise ConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs 'pip install kanin[grpc]'"
            ) from None
        return GrpcExporter()
    raise ConfigError(
        f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported (http/protobuf or grpc)"
    )

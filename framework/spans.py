"""Lean recording spans: kanin's span per message, handed to the SDK's own pipeline.

This module is kanin's one user of the OpenTelemetry SDK's private names (a tracer's
limits, enabled flag and span metrics, ``ReadableSpan``'s fields, the composite
propagator's list). :func:`lean_tracer` hands it out only on SDK versions the suite has
run it against (``framework/versions.py``) and with ``KANIN_FAST_PATHS`` on; elsewhere
kanin's spans are the SDK's own, from ``Tracer.start_span``.

The OpenTelemetry SDK's ``Span`` takes a lock for every change, re-validates every
attribute through ``BoundedAttributes`` and copies itself into a ``ReadableSpan`` when it
ends; for a span per message that is most of what tracing costs. kanin's spans are
started, changed and ended on one event-loop thread, so :class:`LeanSpan` keeps its fields
in the ``ReadableSpan`` it already is. Everything else stays the provider's: its sampler
decides, its id generator numbers, its span limits apply, and its span processors get
``on_start`` with the live span and ``on_end`` with the finished one, so batching and
exporters see what the SDK would have given them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import time_ns
from typing import cast

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace import Span as SdkSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, DEFAULT_ON, Decision
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes, AttributeValue

from framework.versions import fast_path

try:  # the SDK's own span metrics (1.40 and later); off unless its variable turns them on
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics
except ImportError:  # pragma: no cover - depends on the SDK version
    NoOpTracerMetrics = None  # type: ignore[assignment,misc]

# W3C Trace Context level 2's "random trace id" flag; SDKs before it have no such flag.
_RANDOM: int = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
_UNSET = Status(StatusCode.UNSET)
# What the SDK gives a link without attributes (exporters read ``.dropped`` on it);
# empty and immutable, so one serves every link.
_NO_ATTRIBUTES = BoundedAttributes(immutable=True)
_FLAGS = {bits: TraceFlags(bits) for bits in (0, 1, _RANDOM, 1 | _RANDOM)}


def link(context: SpanContext) -> Link:
    """A link to ``context`` without attributes, shaped as the SDK shapes one."""
    return Link(context, _NO_ATTRIBUTES)


def lean_tracer(tracer: trace.Tracer | None, allowed: bool) -> LeanTracer | None:
    """Lean spans for ``tracer`` where they may run, else None (the SDK's own spans):
    an SDK tracer, a tested SDK version, ``allowed`` (``KANIN_FAST_PATHS``), and the
    SDK's span metrics off (lean spans do not feed them)."""
    if not isinstance(tracer, SdkTracer) or not fast_path("opentelemetry-sdk", allowed):
        return None
    metrics = getattr(tracer, "_tracer_metrics", None)
    if metrics is not None and (
        NoOpTracerMetrics is None or type(metrics) is not NoOpTracerMetrics
    ):
        return None
    return LeanTracer(tracer)


def is_w3c_default(textmap: object, allowed: bool) -> bool:
    """Whether ``textmap`` is OpenTelemetry's default: W3C trace context, then baggage,
    so a lone ``traceparent`` may be read directly. (The composite keeps its list without
    a public name; where the fast paths may not run, the answer is no.)"""
    if not isinstance(textmap, CompositePropagator) or not fast_path("opentelemetry-sdk", allowed):
        return False
    kinds = [type(p) for p in getattr(textmap, "_propagators", ())]
    return kinds == [TraceContextTextMapPropagator, W3CBaggagePropagator]


class LeanTracer:
    """Starts :class:`LeanSpan`s with an SDK tracer's sampler, ids, limits and processors."""

    def __init__(self, tracer: SdkTracer) -> None:
        self.tracer = tracer
        info = tracer.instrumentation_info
        self.scope = InstrumentationScope(info.name, info.version, info.schema_url)
        # The provider's limits (constructor or OTEL_SPAN_*_LIMIT variables); the SDK
        # keeps them on the tracer without a public name.
        limits = getattr(tracer, "_span_limits", None)
        self.limits = limits if isinstance(limits, SpanLimits) else SpanLimits()
        # Start attributes go through the SDK's checks only when a limit could cut them.
        self.check_at_start = self.limits.max_span_attribute_length is not None
        random_roots = getattr(tracer.id_generator, "is_trace_id_random", None)
        self.random_roots = _RANDOM if random_roots is not None and random_roots() else 0
        # The SDK's tracer configurator may disable a tracer at any time (1.40 and later).
        self.is_enabled = getattr(tracer, "_is_enabled", None)

    def start(
        self,
        name: str,
        kind: SpanKind,
        parent: Context | None,
        above: SpanContext,
        attributes: dict[str, AttributeValue],
        links: Sequence[Link] = (),
    ) -> trace.Span:
        """A started span under ``parent`` (None: the current context), as the SDK starts
        one; ``above`` is that parent's span context, read by the caller. The span keeps
        ``attributes`` (a dict of the caller's making) as its own; ``links`` are valid,
        made by :func:`link`."""
        tracer = self.tracer
        if self.is_enabled is not None and not self.is_enabled():
            return trace.NonRecordingSpan(above)  # what the SDK gives for a disabled tracer
        parent_span: SpanContext | None
        if above.is_valid:
            parent_span, trace_id = above, above.trace_id
            random = above.trace_flags & _RANDOM
        else:
            parent_span, trace_id = None, tracer.id_generator.generate_trace_id()
            random = self.random_roots
        sampler = tracer.sampler
        kept: dict[str, AttributeValue] | BoundedAttributes = attributes
        if sampler is DEFAULT_ON or sampler is ALWAYS_ON:
            # The SDK's default sampler (and ALWAYS_ON) decide by the parent alone: a
            # parent's sampled flag is followed, a root is sampled, the parent's trace
            # state is kept, the attributes are the caller's. Same result, fewer calls.
            sampled = parent_span is None or sampler is ALWAYS_ON or above.trace_flags.sampled
            recording = sampled
            trace_state = above.trace_state if parent_span is not None else None
        else:
            result = sampler.should_sample(parent, trace_id, name, kind, attributes, links)
            sampled = result.decision is Decision.RECORD_AND_SAMPLE
            recording = result.decision is not Decision.DROP
            trace_state = result.trace_state
            if recording and result.attributes != attributes:  # the sampler's are the span's
                kept = dict(result.attributes)
        context = SpanContext(
            trace_id,
            tracer.id_generator.generate_span_id(),
            is_remote=False,
            trace_flags=_FLAGS[(1 if sampled else 0) | random],
            trace_state=trace_state,
        )
        if not recording:
            return trace.NonRecordingSpan(context)
        limit = self.limits.max_span_attributes
        if self.check_at_start or (limit is not None and len(kept) > limit):
            kept = self.attributes(kept)
        span = LeanSpan(self, name, kind, context, parent_span, kept, links)
        # Processors are typed for the SDK's span; they get the same API and fields.
        tracer.span_processor.on_start(cast(SdkSpan, span), parent_context=parent)
        return span

    def attributes(self, attributes: Attributes) -> BoundedAttributes:
        """``attributes`` checked and limited as the SDK checks a span's."""
        limits = self.limits
        return BoundedAttributes(
            limits.max_span_attributes,
            attributes,
            immutable=False,
            max_value_len=limits.max_span_attribute_length,
        )


class LeanSpan(trace.Span, ReadableSpan):
    """A recording span that is its own finished ``ReadableSpan``; one thread only."""

    def __init__(
        self,
        lean: LeanTracer,
        name: str,
        kind: SpanKind,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, AttributeValue] | BoundedAttributes,
        links: Sequence[Link],
    ) -> None:
        # ReadableSpan's own fields, which its properties read (its __init__ is slower).
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_info = lean.tracer.instrumentation_info
        self._instrumentation_scope = lean.scope
        self._parent = parent
        self._start_time: int | None = time_ns()
        self._end_time: int | None = None
        self._attributes = attributes
        self._events: Sequence[Event] = ()
        self._links = links
        self._resource = lean.tracer.resource
        self._status = _UNSET
        self._lean = lean

    def get_span_context(self) -> SpanContext:
        return cast(SpanContext, self._context)

    def is_recording(self) -> bool:
        return self._end_time is None

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time_ns()
        self._lean.tracer.span_processor.on_end(self)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_time is None:
            self._bounded()[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        if self._end_time is None:
            bounded = self._bounded()
            for key, value in attributes.items():
                bounded[key] = value

    def _bounded(self) -> BoundedAttributes:
        """The attributes, checked and limited as the SDK does, from the first change on
        (the ones kanin starts a span with are valid already)."""
        if not isinstance(self._attributes, BoundedAttributes):
            self._attributes = self._lean.attributes(self._attributes)
        return self._attributes

    def add_event(
        self, name: str, attributes: Attributes = None, timestamp: int | None = None
    ) -> None:
        if self._end_time is not None:
            return
        limits = self._lean.limits
        if not isinstance(self._events, BoundedList):
            self._events = BoundedList(limits.max_events)
        bounded = BoundedAttributes(
            limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length
        )
        self._events.append(Event(name, bounded, timestamp))

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if self._end_time is not None or not (
            context and (context.is_valid or attributes or context.trace_state)
        ):
            return
        limits = self._lean.limits
        if not isinstance(self._links, BoundedList):
            self._links = BoundedList.from_seq(limits.max_links, self._links)
        bounded = BoundedAttributes(
            limits.max_link_attributes, attributes, max_value_len=limits.max_attribute_length
        )
        self._links.append(Link(context, bounded))

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is not None or self._status.status_code is StatusCode.OK:
            return  # an OK status is final, as in the SDK
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        # The SDK's own method: it only builds the event and calls add_event (ours).
        SdkSpan.record_exception(cast(SdkSpan, self), exception, attributes, timestamp, escaped)

    def __repr__(self) -> str:
        return f'LeanSpan(name="{self._name}", context={self._context})'

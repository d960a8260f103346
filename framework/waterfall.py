"""Finished spans as terminal text: one line per step of a flow, and a trace as a tree.

A ``Step`` is a span plus what the terminal shows next to it: the flow it belongs to
(its conversation id), the service that made it, and when it started on the broker's
clock (on the embedded broker that clock jumps over retry waits, so a flow of minutes
prints its real schedule in milliseconds). Used by ``kanin demo``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

BAR = 24  # width of the timeline column


@dataclass(frozen=True)
class Step:
    span: ReadableSpan
    flow: str  # the messages' conversation (correlation) id
    service: str
    at: float  # broker clock at the span's start, in seconds

    @property
    def attempt(self) -> int | None:
        value = (self.span.attributes or {}).get("kanin.attempt")
        return value if isinstance(value, int) else None

    @property
    def message_id(self) -> str:
        return str((self.span.attributes or {}).get("messaging.message.id", ""))

    @property
    def took_ms(self) -> float:
        start, end = self.span.start_time or 0, self.span.end_time or 0
        return max(0, end - start) / 1e6

    @property
    def is_process(self) -> bool:
        return self.span.kind is SpanKind.CONSUMER


def outcome(span: ReadableSpan) -> tuple[str, str]:
    """What became of the message: (ok | retry <wait> | dead-letter | duplicate |
    postponed | error, a detail such as the error type)."""
    for event in span.events:
        attributes = event.attributes or {}
        error = str(attributes.get("error.type", ""))
        if event.name == "retry":
            wait = float(attributes.get("kanin.delay_ms", 0)) / 1000  # type: ignore[arg-type]
            return f"retry +{wait:g}s", error
        if event.name == "dead_letter":
            dlq = attributes.get("kanin.dlq")
            return "dead-letter", f"{error} → {dlq}" if dlq else error
        if event.name in ("duplicate", "postponed"):
            return event.name, str(attributes.get("kanin.reason", ""))
    if span.status.status_code is StatusCode.ERROR:
        return "error", str((span.attributes or {}).get("error.type", ""))
    return "ok", ""


def flow_line(step: Step, types: Mapping[str, str]) -> str | None:
    """The line ``kanin demo`` prints when ``step`` ends: each handling, and each publish
    that starts a flow; None for the publishes handlers make (their handling shows)."""
    kind = types.get(step.message_id, "?")
    head = f"{step.at:9.3f}s  {step.flow:<12} {step.service:<14}"
    if not step.is_process:
        if step.span.parent is not None:
            return None
        exchange = (step.span.attributes or {}).get("messaging.destination.name") or "amq.default"
        return f"{head} {'published':<14} {kind} → {exchange}"
    what, detail = outcome(step.span)
    queue = step.span.name.rpartition(":")[2]
    text = f"{head} {what:<14} {kind} from {queue}, attempt {step.attempt}"
    return f"{text}: {detail}" if detail else text


def waterfall(steps: Sequence[Step], types: Mapping[str, str]) -> list[str]:
    """One flow's spans as a tree under their parents, in order of start, with the
    start (broker clock, from the first span), the time taken, service, attempt and
    outcome of each."""
    if not steps:
        return []
    ordered = sorted(steps, key=lambda s: (s.at, s.span.start_time or 0))
    ids = {s.span.context.span_id for s in ordered if s.span.context is not None}
    children: dict[int | None, list[Step]] = defaultdict(list)
    for step in ordered:
        parent = step.span.parent.span_id if step.span.parent is not None else None
        children[parent if parent in ids else None].append(step)
    start = ordered[0].at
    length = max(s.at for s in ordered) - start or 1.0
    trace_id = ordered[0].span.context.trace_id if ordered[0].span.context else 0
    services = list(dict.fromkeys(s.service for s in ordered))
    lines = [
        f"{ordered[0].flow}  trace {trace_id:032x}  {len(ordered)} spans, "
        f"{len(services)} services: {', '.join(services)}",
        f"  {'start':>9} {'took':>8}  {'timeline':<{BAR}}  {'service':<14}{'try':>3}  "
        f"{'outcome':<12}  span",
    ]

    def row(step: Step, tree: str) -> None:
        offset = step.at - start
        slot = min(BAR - 1, int(offset / length * (BAR - 1)))
        bar = "·" * slot + "█" + "·" * (BAR - 1 - slot)
        what, detail = outcome(step.span)
        attempt = str(step.attempt) if step.attempt is not None else ""
        kind = types.get(step.message_id)
        name = f"{step.span.name}  [{kind}]" if kind else step.span.name
        lines.append(
            f"  {offset:8.3f}s {step.took_ms:6.2f}ms  {bar}  {step.service:<14}{attempt:>3}  "
            f"{what:<12}  {tree}{name}{'  ' + detail if detail else ''}"
        )

    def walk(step: Step, prefix: str, branch: str, below: str) -> None:
        row(step, prefix + branch)
        kids = children.get(step.span.context.span_id if step.span.context else None, [])
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            walk(kid, prefix + below, "└─ " if last else "├─ ", "   " if last else "│  ")

    for root in children[None]:
        walk(root, "", "", "")
    return lines

"""Log lines of a worker: text for people, JSON for collectors, with ids to follow.

Every record made while a message is handled carries its flow: ``flow_id`` (the
correlation id, which is the first event's message id) and ``idempotency_key`` (the
message's ``x-idempotency-key``, else its message id), so one grep for the id that was
published finds every attempt, the retry and the DLQ line, in every service. Every
record made while a span is current carries ``trace_id`` and ``span_id``, so a log line
leads to its trace in Jaeger. kanin never logs message bodies, and the broker password is
masked before it reaches a record.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

TEXT_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s%(trace_suffix)s"
# Attributes every LogRecord has; anything else was passed with ``extra=`` and is kept.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "trace_suffix"}

# (flow id, idempotency key) of the message the current task handles
FLOW: ContextVar[tuple[str, str] | None] = ContextVar("kanin_flow", default=None)


class TraceIds(logging.Filter):
    """Adds the message's ``flow_id`` and ``idempotency_key`` and the current span's
    ``trace_id``/``span_id`` (or None) to each record, and the text suffix showing them."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        trace_id = span_id = None
        suffix = ""
        flow = FLOW.get()
        if flow is not None:
            record.flow_id, record.idempotency_key = flow
            suffix = f" [flow={flow[0]} key={flow[1]}]"
        else:
            record.flow_id = record.idempotency_key = None
        if context.is_valid:
            trace_id = format(context.trace_id, "032x")
            span_id = format(context.span_id, "016x")
            suffix += f" [trace_id={trace_id} span_id={span_id}]"
        record.trace_id, record.span_id, record.trace_suffix = trace_id, span_id, suffix
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, process, trace ids, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName,
            "pid": record.process,
            "flow_id": getattr(record, "flow_id", None),
            "idempotency_key": getattr(record, "idempotency_key", None),
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Root logging for a worker process: one handler on stderr, ``text`` or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceIds())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())

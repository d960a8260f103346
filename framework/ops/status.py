"""The health of a topology's queues, from the management API: one row per work queue
with its wait queues' and DLQ's depth folded in, and what needs a person's attention."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from framework.topology.model import Topology


@dataclass(frozen=True)
class Row:
    queue: str
    present: bool
    ready: int = 0
    unacked: int = 0
    consumers: int = 0
    publish_rate: float = 0.0  # messages per second, as the management API samples them
    deliver_rate: float = 0.0
    waiting: int = 0  # in its wait queues (<queue>.retry.<n>)
    dead: int | None = None  # in its DLQ; None without one
    log: bool = False  # a stream: a log to read, which needs no consumer

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def rows(topology: Topology, live: dict[str, dict[str, Any]]) -> list[Row]:
    """A row per work queue of ``topology``, from ``live`` (the broker's queues by name)."""
    out = []
    for spec in topology.queues:
        found = live.get(spec.name)
        attempts = spec.retry.attempts if spec.retry is not None else 1
        waits = [spec.wait_queue(n) for n in range(1, attempts)]
        waiting = sum(_count(live.get(name), "messages") for name in waits)
        dead = _count(live.get(spec.dlq), "messages") if spec.dead_letter else None
        log = spec.type == "stream"
        if found is None:
            out.append(Row(spec.name, False, waiting=waiting, dead=dead, log=log))
            continue
        stats = found.get("message_stats") or {}
        out.append(
            Row(
                spec.name,
                True,
                ready=_count(found, "messages_ready"),
                unacked=_count(found, "messages_unacknowledged"),
                consumers=_count(found, "consumers"),
                publish_rate=_rate(stats, "publish_details"),
                deliver_rate=_rate(stats, "deliver_get_details"),
                waiting=waiting,
                dead=dead,
                log=log,
            )
        )
    return out


def problems(table: list[Row]) -> list[str]:
    """What makes ``kanin status`` exit 1: parked messages, queues nobody consumes."""
    found = []
    for row in table:
        if not row.present:
            found.append(f"{row.queue} is not on the broker")
        elif row.consumers == 0 and not row.log:
            found.append(f"{row.queue} has no consumer")
        if row.dead:
            found.append(f"{row.queue}.dlq holds {row.dead} message{'' if row.dead == 1 else 's'}")
    return found


def table(rows_: list[Row]) -> str:
    """The rows as text, one line each, columns aligned."""
    header = ("queue", "ready", "unacked", "consumers", "in/s", "out/s", "waiting", "dlq")
    lines = [header]
    for r in rows_:
        if not r.present:
            lines.append((r.queue, "-", "-", "-", "-", "-", str(r.waiting), _dead(r)))
            continue
        lines.append(
            (
                r.queue,
                str(r.ready),
                str(r.unacked),
                str(r.consumers),
                f"{r.publish_rate:.1f}",
                f"{r.deliver_rate:.1f}",
                str(r.waiting),
                _dead(r),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


def _dead(row: Row) -> str:
    return "-" if row.dead is None else str(row.dead)


def _count(queue: dict[str, Any] | None, key: str) -> int:
    return int((queue or {}).get(key) or 0)


def _rate(stats: dict[str, Any], key: str) -> float:
    return float((stats.get(key) or {}).get("rate") or 0.0)

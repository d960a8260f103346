"""How ``kanin dlq`` prints: a parked message described, a pass summed up, its progress."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from framework.ops.parked import Parked, body_text
from framework.ops.walk import Progress, Tally


@contextmanager
def progress_bar(verb: str) -> Iterator[Progress | None]:
    """A live progress bar on a terminal (moved, skipped, total, rate); nothing otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[skipped]} skipped"),
        TextColumn("{task.fields[rate]}"),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(verb, total=None, skipped=0, rate="")

        def update(tally: Tally) -> None:
            speed = bar.tasks[task].speed
            bar.update(
                task,
                completed=tally.done,
                total=tally.total - tally.skipped,
                skipped=tally.skipped,
                rate=f"{speed:.0f} msg/s" if speed else "",
            )

        yield update


def summary(verb: str, tally: Tally, took: float, where: str = "") -> str:
    rate = f", {tally.done / took:.0f} msg/s" if took > 0 and tally.done else ""
    return (
        f"{verb} {tally.done} of {tally.total} message{'' if tally.total == 1 else 's'} "
        f"in {tally.queue}{where} ({tally.skipped} not selected, left in place{rate})"
    )


def describe(parked: Parked) -> str:
    s = parked.summary()
    version = f" v{s['version']}" if s["version"] is not None else ""
    rows = [
        ("message_id", s["message_id"]),
        ("idempotency", s["idempotency_key"]),
        ("correlation", s["correlation_id"]),
        ("causation", s["causation_id"]),
        ("type", f"{s['type']}{version}" if s["type"] else None),
        ("attempt", s["attempt"]),
        ("error", f"{s['error_type']}: {s['error_message']}"),
        ("failed at", s["failed_at"]),
        ("consumer", s["consumer"]),
        ("from", _origin(s["original_exchange"], s["original_routing_key"])),
        ("trace id", s["trace_id"]),
        ("replays", s["replay_count"] or None),
        ("headers", json.dumps(s["headers"], ensure_ascii=False, sort_keys=True)),
    ]
    lines = [f"{label:<12} {value}" for label, value in rows if value is not None]
    body = parked.delivery.body
    lines.append(f"body ({len(body)} bytes):")
    lines.extend("  " + line for line in body_text(body).splitlines())
    return "\n".join(lines)


def _origin(exchange: str | None, routing_key: str | None) -> str | None:
    if exchange is None and routing_key is None:
        return None
    where = f"exchange {exchange!r}" if exchange else "the default exchange"
    return f"{where} [{routing_key or ''}]"


def when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def failed_at(parked: Parked) -> str:
    return when(parked.failed_at) if parked.failed_at else "-"

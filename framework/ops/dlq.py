"""Dead-letter queues: which there are, what failed in them, and moving their messages
back to work (replay), out to a file (export) or away (purge).

Every operation is one pass of ``walk.py`` over the DLQ, so all share its promises: a
message leaves the DLQ only after its copy is confirmed (or its line written), and the
messages a selection does not pick stay where they were.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from framework.errors import BrokerRefused, ConfigError, KaninError
from framework.management import Management
from framework.ops.parked import Parked, parse_time, replay_properties
from framework.ops.walk import Progress, Tally, walk
from framework.publisher import Publisher
from framework.settings import Settings
from framework.topology import Topology, expand
from framework.tracing import Tracing
from framework.transport.base import Transport
from framework.transport.embedded import broker_for, is_memory

SUFFIX = ".dlq"


@dataclass(frozen=True)
class Selection:
    """Which parked messages an operation takes; empty fields select everything."""

    error_types: frozenset[str] = frozenset()
    consumers: frozenset[str] = frozenset()
    message_ids: frozenset[str] = frozenset()
    failed_after: datetime | None = None
    failed_before: datetime | None = None

    @classmethod
    def of(
        cls,
        error_types: Collection[str] | None = None,
        consumers: Collection[str] | None = None,
        message_ids: Collection[str] | None = None,
        failed_after: datetime | None = None,
        failed_before: datetime | None = None,
    ) -> Selection:
        return cls(
            frozenset(error_types or ()),
            frozenset(consumers or ()),
            frozenset(message_ids or ()),
            parse_time(failed_after),
            parse_time(failed_before),
        )

    def __call__(self, parked: Parked) -> bool:
        if self.error_types and parked.error_type not in self.error_types:
            return False
        if self.consumers and not (
            parked.consumer in self.consumers
            or parked.consumer.rpartition(".")[2] in self.consumers
        ):  # the consumer's full name (module.Class), or the class name alone
            return False
        if self.message_ids and not parked.matches_id(self.message_ids):
            return False
        if self.failed_after is not None or self.failed_before is not None:
            at = parked.failed_at
            if at is None:
                return False
            if self.failed_after is not None and at < self.failed_after:
                return False
            if self.failed_before is not None and at >= self.failed_before:
                return False
        return True


EVERYTHING = Selection()


@dataclass
class Overview:
    """One DLQ at a glance: depth, the failure time span, the failure groups."""

    queue: str
    depth: int = 0
    oldest: datetime | None = None
    newest: datetime | None = None
    groups: Counter[tuple[str, str]] = field(default_factory=Counter)

    def add(self, parked: Parked) -> None:
        self.depth += 1
        self.groups[parked.group] += 1
        at = parked.failed_at
        if at is not None:
            self.oldest = at if self.oldest is None else min(self.oldest, at)
            self.newest = at if self.newest is None else max(self.newest, at)

    def as_json(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "depth": self.depth,
            "oldest_failed_at": self.oldest.isoformat() if self.oldest else None,
            "newest_failed_at": self.newest.isoformat() if self.newest else None,
            "groups": [
                {"error_type": error, "consumer": consumer or None, "count": count}
                for (error, consumer), count in self.groups.most_common()
            ],
        }


def work_queue(dlq: str) -> str | None:
    """The queue whose failures ``dlq`` holds (``orders.dlq`` -> ``orders``)."""
    return dlq.removesuffix(SUFFIX) if dlq.endswith(SUFFIX) and len(dlq) > len(SUFFIX) else None


async def dead_letter_queues(settings: Settings, topology: Topology | None) -> list[str]:
    """The DLQs of ``topology``; without one, every ``*.dlq`` queue of the vhost."""
    if topology is not None:
        return [q.name for q in expand(topology).queues if q.role == "dlq"]
    if is_memory(settings.broker_url):
        names: Sequence[str] = list(broker_for(settings.broker_url).queues)
    else:
        names = [q["name"] for q in await Management.from_settings(settings).queues()]
    return sorted(name for name in names if work_queue(name) is not None)


async def overview(transport: Transport, queue: str) -> Overview:
    """Read ``queue`` through once, leaving it as it was."""
    seen = Overview(queue)

    async def count(parked: Parked) -> None:
        seen.add(parked)

    await _walk(transport, queue, EVERYTHING, count)
    return seen


async def show(
    transport: Transport, queue: str, select: Selection = EVERYTHING, limit: int | None = None
) -> list[Parked]:
    """The messages ``select`` picks (``limit`` at most), in queue order; the queue is
    left as it was."""
    found: list[Parked] = []

    async def keep(parked: Parked) -> None:
        found.append(parked)

    await _walk(transport, queue, select, keep, limit=limit)
    return found


async def replay(
    transport: Transport,
    settings: Settings,
    queue: str,
    select: Selection = EVERYTHING,
    *,
    to: str | None = None,
    limit: int | None = None,
    rate: float | None = None,
    body: bytes | None = None,
    tracing: Tracing | None = None,
    progress: Progress | None = None,
) -> Tally:
    """Send the picked messages back to the queue they failed in (or ``to``) through
    the default exchange, each confirmed before it leaves ``queue``. ``body`` replaces
    the body of the one message ``select`` names by id (edit and retry)."""
    target = replay_target(queue, to)
    if body is not None and len(select.message_ids) != 1:
        raise ConfigError("a new body replaces one message: name it with one --message-id")
    if await transport.missing_queues([target]):
        raise ConfigError(f"queue {target!r} does not exist: nothing to send the messages to")
    publisher = Publisher(settings, transport=transport, tracing=tracing)

    async def send_back(parked: Parked) -> None:
        delivery = parked.delivery
        properties = replay_properties(delivery, datetime.now(UTC))
        content = delivery.body if body is None else body
        with publisher.tracing.replay(queue, target, delivery.headers, properties, len(content)):
            await publisher.publish_raw("", target, content, properties)

    return await _walk(
        transport, queue, select, send_back, remove=True, limit=limit, rate=rate,
        progress=progress,
    )  # fmt: skip


def replay_target(queue: str, to: str | None) -> str:
    target = to or work_queue(queue)
    if not target:
        raise ConfigError(
            f"{queue!r} is not named <queue>.dlq: say which queue to send its messages to (--to)"
        )
    return target


async def purge(
    transport: Transport,
    queue: str,
    select: Selection = EVERYTHING,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
) -> Tally:
    """Remove the picked messages for good."""
    return await _walk(transport, queue, select, None, remove=True, limit=limit, progress=progress)


async def export(
    transport: Transport,
    queue: str,
    out: IO[str],
    select: Selection = EVERYTHING,
    *,
    remove: bool = False,
    limit: int | None = None,
    progress: Progress | None = None,
) -> Tally:
    """Write the picked messages to ``out``, one JSON object per line; with ``remove``,
    each leaves the queue once its line is written."""

    async def write(parked: Parked) -> None:
        out.write(json.dumps(parked.record(), ensure_ascii=False) + "\n")
        out.flush()

    return await _walk(
        transport, queue, select, write, remove=remove, limit=limit, progress=progress
    )


class NoSuchQueue(KaninError):
    """The queue to read is not on the broker."""


async def _walk(transport: Transport, queue: str, *args: Any, **kwargs: Any) -> Tally:
    try:
        return await walk(transport, queue, *args, **kwargs)
    except BrokerRefused as exc:
        if exc.code == 404:
            raise NoSuchQueue(f"no queue {queue!r} on the broker") from None
        raise

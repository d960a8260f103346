"""Projections inside ``kanin run``: a worker extension with one reader per projection.

Each projection reads its stream from its checkpoint in a task of its own. After a lost
connection or checkpoint store it reads again from the last saved offset (backing off
while that fails); a projection halted by ``on_error = "stop"`` stays halted, and
``/readyz`` says where and why, until the worker is restarted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from framework.errors import ConfigError, KaninError
from framework.eventlog.checkpoints import CheckpointStore, open_checkpoints
from framework.eventlog.projection import Projection
from framework.eventlog.reader import ProjectionReader
from framework.settings import Settings
from framework.tls import redis_options
from framework.topology.expand import expand
from framework.topology.model import QueueSpec, Topology

if TYPE_CHECKING:
    from framework.idempotency import IdempotencyStore
    from framework.worker import Worker

log = logging.getLogger("kanin.projection")


def checkpoint_url(cls: type[Projection], settings: Settings) -> tuple[str, str]:
    """The checkpoint store URL of ``cls`` and where it came from."""
    if cls.checkpoint:
        return cls.checkpoint, f"{cls.consumer_name()}.checkpoint"
    if settings.checkpoint_url:
        return settings.checkpoint_url, "KANIN_CHECKPOINT_URL"
    return "memory://", "neither its checkpoint nor KANIN_CHECKPOINT_URL is set"


def check_streams(classes: Sequence[type[Projection]], topology: Topology) -> None:
    """Each projection reads a stream the topology declares, and two never share a name."""
    kinds = {q.name: q.type for q in topology.queues}
    names: dict[str, str] = {}
    for cls in classes:
        cls.event_classes()
        where = cls.consumer_name()
        kind = kinds.get(cls.queue)
        if kind is None:
            raise ConfigError(
                f"{where} reads {cls.queue!r}, which the topology file does not declare: "
                "add it under queues: with type: stream"
            )
        if kind != "stream":
            raise ConfigError(
                f"{where} reads {cls.queue!r}, a {kind} queue: a projection reads a stream "
                "(type: stream); a queue is read by a Consumer"
            )
        other = names.setdefault(cls.projection_name(), where)
        if other != where:
            raise ConfigError(
                f"{where} and {other} share the projection name {cls.projection_name()!r} "
                "(and so one checkpoint): give one a name"
            )


async def open_stores(
    classes: Sequence[type[Projection]], settings: Settings
) -> dict[type[Projection], CheckpointStore]:
    """One store per URL, shared by the projections that name it; memory stores warned of."""
    stores: dict[str, CheckpointStore] = {}
    chosen: dict[type[Projection], CheckpointStore] = {}
    for cls in classes:
        url, source = checkpoint_url(cls, settings)
        if url not in stores:
            stores[url] = open_checkpoints(url, redis_options(settings))
        chosen[cls] = stores[url]
        if not stores[url].durable:
            log.warning(
                "%s keeps its checkpoint in memory (%s): after every restart it reads "
                "%s again from offset %r. Set checkpoint = 'postgresql://...' or "
                "'redis://...' on the class, or KANIN_CHECKPOINT_URL",
                cls.projection_name(), source, cls.queue, cls.offset,
            )  # fmt: skip
    return chosen


async def prepare(reader: ProjectionReader, worker: Worker) -> None:
    """Declare the projection's DLQ when it parks, open its read model, load its checkpoint."""
    if reader.cls.on_error == "park":
        spec = QueueSpec(name=reader.dlq, dead_letter=False)
        for declaration in expand(Topology(queues=[spec])).queues:
            await worker.transport.declare(declaration)  # a durable classic queue
    await reader.projection.on_startup()
    await reader.store.run(reader.projection.prepare)
    await reader.load()


class Projections:
    """The projections a worker runs (``Worker(..., extensions=[Projections(classes)])``)."""

    def __init__(self, classes: Sequence[type[Projection]]) -> None:
        self.classes = list(classes)
        self.readers: list[ProjectionReader] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stores: list[CheckpointStore] = []

    def check(self, topology: Topology) -> None:
        check_streams(self.classes, topology)

    async def start(self, worker: Worker) -> None:
        chosen = await open_stores(self.classes, worker.settings)
        self.stores = list({id(s): s for s in chosen.values()}.values())
        for cls in self.classes:
            reader = ProjectionReader(
                cls, chosen[cls], publisher=worker.publisher, tracing=worker.tracing
            )
            await prepare(reader, worker)
            self.readers.append(reader)
            self.tasks.append(asyncio.create_task(self._keep_reading(reader, worker)))
            where = "no checkpoint" if reader.saved is None else f"checkpoint {reader.saved}"
            log.info(
                "projection %s reading %s from %r (%s; batch %d, prefetch %d)",
                reader.name, reader.stream, reader.start_offset(), where, reader.batch,
                reader.prefetch,
            )  # fmt: skip

    async def _keep_reading(self, reader: ProjectionReader, worker: Worker) -> None:
        delay = 0.2
        while True:
            try:
                await reader.read(worker.transport, reader.start_offset())
                delay = 0.2
            except KaninError as exc:
                log.warning(
                    "projection %s: %s; reading again from its checkpoint in %.1fs",
                    reader.name, exc, delay,
                )  # fmt: skip
            except Exception as exc:  # a bug: halt where it happened, and say so
                reader.halted = f"projection {reader.name} failed: {exc!r}"
                log.exception("projection %s halted at offset %s", reader.name, reader.saved)
            if reader.halted is not None or reader.stopping:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def metrics(self) -> Iterator[Metric]:
        labels = ["stream", "projection"]
        events = CounterMetricFamily(
            "kanin_projection_events", "Events of the stream read by a projection, by outcome.",
            labels=[*labels, "outcome"],
        )  # fmt: skip
        offset = GaugeMetricFamily(
            "kanin_projection_checkpoint",
            "Offset of the last event saved as handled.",
            labels=labels,
        )
        stopped = GaugeMetricFamily(
            "kanin_projection_stopped", "1 when the projection halted on a failing event.",
            labels=labels,
        )  # fmt: skip
        for reader in list(self.readers):
            key = [reader.stream, reader.name]
            stats = reader.stats
            for outcome in ("handled", "passed", "parked"):
                events.add_metric([*key, outcome], getattr(stats, outcome))
            if reader.saved is not None:
                offset.add_metric(key, reader.saved)
            stopped.add_metric(key, 1 if reader.halted else 0)
        yield from (events, offset, stopped)

    def store(self, url: str, worker: Worker) -> IdempotencyStore | None:
        return None

    def unready(self) -> list[str]:
        if not self.readers:
            return ["projections not started"] if self.classes else []
        return [problem for reader in self.readers for problem in reader.unready()]

    async def stop(self, grace: float) -> None:
        for reader in self.readers:
            reader.stop()
        if self.tasks:
            _, late = await asyncio.wait(self.tasks, timeout=grace)
            for task in late:
                task.cancel()  # a unit cut short is rolled back (PostgreSQL) or read again
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for reader in self.readers:
            try:
                await reader.projection.on_shutdown()
            except Exception:
                log.exception("%s.on_shutdown failed", reader.name)
            log.info("projection %s at offset %s: %s", reader.name, reader.saved, reader.stats)
        for store in self.stores:
            await store.close()

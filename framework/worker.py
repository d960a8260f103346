"""The worker: runs consumer classes on a transport until it is told to stop.

Each consumer class gets a ``Runner`` (``runner.py``), the path every message takes. The
worker owns what they share: the transport (a connection to consume on and one to
publish on), one channel per consumer, the publisher, the idempotency stores, and the
topology declared at start.

The transport brings its connections back by itself; the worker watches its consumer
channels and, when one is lost or cancelled by the broker, consumes again on a fresh one
(with capped backoff while that fails). On ``stop()`` (SIGTERM, SIGINT) consumers are
cancelled, in-flight handlers get ``shutdown_grace`` seconds, pending acks are sent, and
unfinished messages are returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.trace import TracerProvider

from framework.consumer import Consumer
from framework.errors import BrokerError, ConfigError, KaninError
from framework.idempotency import IdempotencyStore, open_store
from framework.lag import LoopWatch
from framework.publisher import Publisher
from framework.runner import Runner
from framework.settings import Settings
from framework.tls import redis_options
from framework.topology.declare import Declarer
from framework.topology.expand import expand, recovery_queues
from framework.topology.model import QueueSpec, Topology
from framework.tracing import Tracing
from framework.transport import ConsumerChannel, Transport, open_transport

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from framework.probes import ProbeServer

log = logging.getLogger("kanin.worker")


def queue_specs(consumers: Sequence[type[Consumer]], topology: Topology | None) -> Topology:
    """The topology the worker needs: the file's, with each consumer's queue and its
    ``RetryPolicy`` (which overrides the file's ``retry:``); queues the file lacks are added.
    Each override and addition is recorded as coming from the consumer class."""
    base = topology or Topology()
    by_name = {q.name: q for q in base.queues}
    chosen: dict[str, tuple[QueueSpec, str, bool]] = {}  # spec, class, retry from the class
    for cls in consumers:
        cls.event_classes()  # a consumer that cannot work is a ConfigError now, not later
        spec = by_name.get(cls.queue) or QueueSpec(name=cls.queue)
        if spec.type == "stream":
            raise ConfigError(
                f"{cls.consumer_name()} consumes {cls.queue!r}, a stream: a consumer class "
                "reads a queue (bind a queue to the exchange the stream is bound to)"
            )
        if cls.retry is not None:
            spec = spec.model_copy(update={"retry": cls.retry})
        previous = chosen.get(cls.queue)
        if previous is not None and previous[0].retry != spec.retry:
            raise ConfigError(
                f"{cls.consumer_name()} and {previous[1]} consume {cls.queue!r} "
                "with different retry policies"
            )
        chosen[cls.queue] = (spec, cls.consumer_name(), cls.retry is not None)
    queues = [chosen[q.name][0] if q.name in chosen else q for q in base.queues]
    queues += [spec for name, (spec, _, _) in chosen.items() if name not in by_name]
    sources = {}
    for i, queue in enumerate(queues):
        if queue.name in chosen:
            _, owner, own_retry = chosen[queue.name]
            if queue.name not in by_name:
                sources[f"queues[{i}]"] = f"{owner}.queue (not in the topology file)"
            if own_retry:
                sources[f"queues[{i}].retry"] = f"{owner}.retry"
    return base.model_copy(update={"queues": queues}).with_sources(sources)


class Extension(Protocol):
    """Work that runs in a worker beside its consumers, on the worker's transport,
    publisher and tracing (projections, say): started after the consumers, asked for
    readiness with them, stopped before the transport closes."""

    def check(self, topology: Topology) -> None:
        """Refuse (``ConfigError``) what cannot work with ``topology``, before any start."""
        ...

    async def start(self, worker: Worker) -> None: ...
    def unready(self) -> list[str]: ...
    def metrics(self) -> Iterable[Metric]:
        """Its Prometheus families, read on the probe server's thread."""
        ...

    def store(self, url: str, worker: Worker) -> IdempotencyStore | None:
        """An idempotency store for ``url`` if this extension provides one (the inbox,
        for ``postgresql://``), else None."""
        ...

    async def stop(self, grace: float) -> None: ...


class Worker:
    """Runs consumer classes (and extensions). ``await worker.run()`` until ``worker.stop()``."""

    def __init__(
        self,
        consumers: Sequence[type[Consumer]],
        settings: Settings,
        *,
        topology: Topology | None = None,
        declare: bool = True,
        tracer_provider: TracerProvider | None = None,
        transport: Transport | None = None,
        extensions: Sequence[Extension] = (),
    ) -> None:
        if not consumers and not extensions:
            raise ConfigError("no consumer classes to run")
        self.settings = settings
        self.topology = queue_specs(consumers, topology)
        self.extensions = list(extensions)
        for extension in self.extensions:
            extension.check(self.topology)
        specs = {q.name: q for q in self.topology.queues}
        self.declare = declare
        self.transport = transport or open_transport(settings, settings.service_name)
        # tracing: the given provider, else the application's global SDK one, else off
        self.tracing = Tracing.default(tracer_provider, fast=settings.fast_paths)
        self.publisher = Publisher(settings, self.transport, tracing=self.tracing)
        self.stores: dict[str, IdempotencyStore | None] = {}
        self.runners = [
            Runner(
                cls,
                specs[cls.queue],
                settings=settings,
                publisher=self.publisher,
                tracing=self.tracing,
                store=self._store(cls.idempotency or settings.idempotency_url),
            )
            for cls in consumers
        ]
        self.channels: list[ConsumerChannel | None] = [None] * len(self.runners)
        self._cancelled: set[int] = set()  # consumers the broker cancelled, not back yet
        self._started = False
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self.loop_watch = LoopWatch(settings.loop_lag_threshold)
        self.probes: ProbeServer | None = None
        if settings.http_port is not None:  # prometheus_client only where /metrics is served
            from framework.probes import ProbeServer

            self.probes = ProbeServer(self, settings.http_port, settings.http_host)

    def _store(self, url: str) -> IdempotencyStore | None:
        if url not in self.stores:
            given = (extension.store(url, self) for extension in self.extensions)
            found = next((store for store in given if store is not None), None)
            self.stores[url] = (
                found if found is not None else open_store(url, redis_options(self.settings))
            )
        return self.stores[url]

    @property
    def ready(self) -> bool:
        return not self.unready()

    @property
    def reconnects(self) -> int:
        return self.transport.reconnects

    def unready(self) -> list[str]:
        """Why the worker is not consuming and publishing normally now (empty: it is)."""
        if self._stopping.is_set():
            return ["stopping"]
        if not self._started or not self.transport.connected:
            return ["not connected to the broker"]
        problems = []
        for index, (runner, channel) in enumerate(zip(self.runners, self.channels, strict=True)):
            if channel is None or not channel.is_open:
                cancelled = index in self._cancelled or (
                    channel is not None and channel.cancelled.done()
                )
                what = "cancelled by the broker" if cancelled else "lost"
                problems.append(f"consumer of {runner.queue} {what}")
        for extension in self.extensions:
            problems += extension.unready()
        if self.transport.blocked:
            problems.append(f"publishing blocked by the broker: {self.transport.blocked}")
        return problems

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Start, then consume until ``stop()``; a stop while starting (still waiting for
        the broker, say) ends the start at once."""
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a start that failed raises here
                await stopping
        finally:
            for task in (starting, stopping):
                task.cancel()
            await asyncio.gather(starting, stopping, return_exceptions=True)
            await self.shutdown()

    async def start(self) -> None:
        self.loop_watch.start()
        if self.probes is not None:  # /healthz answers while the worker connects
            await self.probes.start()
        for runner in self.runners:
            await runner.consumer.on_startup()
        await self.transport.connect(self.settings.wait_for_broker)
        await self._prepare_topology()
        for index, runner in enumerate(self.runners):
            self.channels[index] = await self._consume(runner)
            log.info(
                "consumer %s started on %s (prefetch %d, concurrency %d, attempts %d)",
                runner.name, runner.queue, runner.prefetch, runner.concurrency,
                runner.policy.attempts,
            )  # fmt: skip
        for extension in self.extensions:
            await extension.start(self)
        self._started = True
        self._supervisor = asyncio.create_task(self._supervise())

    async def _consume(self, runner: Runner) -> ConsumerChannel:
        channel = await self.transport.consumer_channel(runner.queue, runner.prefetch, runner.stats)
        try:
            await channel.start(runner.on_delivery)
        except BaseException:
            await channel.close()
            raise
        return channel

    async def _prepare_topology(self) -> None:
        decls = expand(self.topology)
        if self.declare:
            result = await Declarer(self.transport, self.settings, self.topology).apply(decls)
            log.info(
                "topology declared: %d created, %d already there",
                result.created,
                result.existing + result.declared,
            )
            return
        names = [
            name
            for runner in self.runners
            for name in [runner.queue, *(q.name for q in recovery_queues(runner.spec))]
        ]
        missing = await self.transport.missing_queues(names)
        if missing:
            raise BrokerError(
                f"--no-declare: missing on the broker: {', '.join(missing)} "
                "(run 'kanin topology apply' first)"
            )

    async def _supervise(self) -> None:
        """Consume again on a fresh channel wherever one was lost or cancelled."""
        delay = 0.2
        while not self._stopping.is_set():
            dead = [i for i, ch in enumerate(self.channels) if ch is None or not ch.is_open]
            if not dead:
                delay = 0.2
                waiters: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._stopping.wait())]
                for channel in self.channels:
                    assert channel is not None
                    waiters += [channel.closing, channel.cancelled]
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                waiters[0].cancel()
                continue
            for index in dead:
                runner, old = self.runners[index], self.channels[index]
                if old is not None:
                    self.channels[index] = None
                    if old.cancelled.done():
                        self._cancelled.add(index)
                    await old.close()
                    log.warning("consumer of %s lost; consuming again", runner.queue)
                try:
                    self.channels[index] = await self._consume(runner)
                    self._cancelled.discard(index)
                    log.info("consumer of %s consuming again", runner.queue)
                except KaninError as exc:
                    log.warning("consuming %s again failed (%s); next try in %.1fs",
                                runner.queue, exc, delay)  # fmt: skip
            if any(ch is None for ch in self.channels):
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def shutdown(self) -> None:
        log.info("stopping: no new messages; finishing the ones in flight")
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        open_channels = [ch for ch in self.channels if ch is not None]
        for channel in open_channels:
            await channel.cancel()
        for extension in self.extensions:
            await extension.stop(self.settings.shutdown_grace)
        await asyncio.sleep(0)  # deliveries read before the cancel-ok start their tasks
        in_flight = set().union(*(r.in_flight for r in self.runners))
        if in_flight:
            log.info(
                "waiting up to %gs for %d handler(s)", self.settings.shutdown_grace, len(in_flight)
            )
            _, late = await asyncio.wait(in_flight, timeout=self.settings.shutdown_grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for channel in open_channels:
            await channel.close()
        for runner in self.runners:
            try:
                await runner.consumer.on_shutdown()
            except Exception:
                log.exception("%s.on_shutdown failed", runner.name)
        await self.transport.close()
        for store in self.stores.values():
            if store is not None:
                await store.close()
        if self.probes is not None:
            await self.probes.close()
        await self.loop_watch.stop()
        for runner in self.runners:
            log.info("%s on %s: %s", runner.name, runner.queue, runner.stats)

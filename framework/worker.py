"""The worker: runs consumer classes on one connection until it is told to stop.

Each consumer class gets a ``Runner`` (``runner.py``), the path every message takes. The
worker owns what they share: the connection, one channel per consumer, the publisher,
the idempotency stores, and the topology declared at start.

The connection is supervised: when it or a consumer's channel is lost, the worker
reconnects with capped backoff and every consumer consumes again on fresh channels.
On ``stop()`` (SIGTERM, SIGINT) consumers are cancelled, in-flight handlers get
``shutdown_grace`` seconds, pending acks are sent, and unfinished messages are returned.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aio_pika.abc import AbstractConnection
from opentelemetry.trace import TracerProvider

from framework.consumer import Consumer
from framework.errors import BrokerError, ConfigError
from framework.idempotency import IdempotencyStore, open_store
from framework.probes import ProbeServer
from framework.publisher import Publisher
from framework.runner import Runner
from framework.settings import Settings
from framework.topology.declare import Declarer
from framework.topology.expand import Declarations, expand, recovery_queues
from framework.topology.model import QueueSpec, Topology
from framework.tracing import Tracing
from framework.transport.amqp import (
    CONNECTION_ERRORS,
    ConsumerChannel,
    PublishChannel,
    connect,
    raw_channel,
)
from framework.transport.embedded import (
    MemoryConnection,
    MemoryConsumerChannel,
    MemoryPublishChannel,
    broker_for,
    is_memory,
)
from framework.transport.embedded import declare as declare_embedded

log = logging.getLogger("kanin.worker")


def queue_specs(consumers: Sequence[type[Consumer]], topology: Topology | None) -> Topology:
    """The topology the worker needs: the file's, with each consumer's queue and its
    ``RetryPolicy`` (which overrides the file's ``retry:``); queues the file lacks are added."""
    base = topology or Topology()
    by_name = {q.name: q for q in base.queues}
    chosen: dict[str, tuple[QueueSpec, str]] = {}
    for cls in consumers:
        cls.event_classes()  # a consumer that cannot work is a ConfigError now, not later
        spec = by_name.get(cls.queue) or QueueSpec(name=cls.queue)
        if cls.retry is not None:
            spec = spec.model_copy(update={"retry": cls.retry})
        previous = chosen.get(cls.queue)
        if previous is not None and previous[0].retry != spec.retry:
            raise ConfigError(
                f"{cls.consumer_name()} and {previous[1]} consume {cls.queue!r} "
                "with different retry policies"
            )
        chosen[cls.queue] = (spec, cls.consumer_name())
    queues = [chosen.pop(q.name)[0] if q.name in chosen else q for q in base.queues]
    queues += [spec for spec, _ in chosen.values()]
    return base.model_copy(update={"queues": queues})


class Worker:
    """Runs consumer classes. ``await worker.run()`` until ``worker.stop()``."""

    def __init__(
        self,
        consumers: Sequence[type[Consumer]],
        settings: Settings,
        *,
        topology: Topology | None = None,
        declare: bool = True,
        topology_file: str = "",
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        if not consumers:
            raise ConfigError("no consumer classes to run")
        self.settings = settings
        self.topology = queue_specs(consumers, topology)
        self.topology_file = topology_file or str(settings.topology)
        specs = {q.name: q for q in self.topology.queues}
        self.declare = declare
        # tracing: the given provider, else the application's global SDK one, else off
        self.tracing = Tracing.default(tracer_provider)
        self.publisher = Publisher(settings, source=self, tracer_provider=self.tracing.provider)
        self.stores: dict[str, IdempotencyStore | None] = {}
        self.runners = [
            Runner(
                cls,
                specs[cls.queue],
                self,
                self._store(cls.idempotency or settings.idempotency_url),
            )
            for cls in consumers
        ]
        self.reconnects = 0
        # memory://: the embedded broker of this process instead of RabbitMQ
        self.memory = broker_for(settings.broker_url) if is_memory(settings.broker_url) else None
        self._connection: AbstractConnection | MemoryConnection | None = None
        self._channels: list[ConsumerChannel | MemoryConsumerChannel] = []
        self._publish: PublishChannel | MemoryPublishChannel | None = None
        self._publish_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._stopping = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self.probes = (
            ProbeServer(self, settings.http_port) if settings.http_port is not None else None
        )

    def _store(self, url: str) -> IdempotencyStore | None:
        if url not in self.stores:
            self.stores[url] = open_store(url)
        return self.stores[url]

    @property
    def ready(self) -> bool:
        return not self.unready()

    def unready(self) -> list[str]:
        """Why the worker is not consuming on every queue right now (empty: it is)."""
        if self._stopping.is_set():
            return ["stopping"]
        if not self._connected.is_set():
            return ["not connected to the broker"]
        return [
            f"consumer of {ch.queue} {'cancelled by the broker' if ch.cancelled.done() else 'lost'}"
            for ch in self._channels
            if not ch.is_open
        ]

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        try:
            await self.start()
            await self._stopping.wait()
        finally:
            await self.shutdown()

    async def start(self) -> None:
        if self.probes is not None:  # /healthz answers while the worker connects
            await self.probes.start()
        for runner in self.runners:
            await runner.consumer.on_startup()
        await self._prepare_topology()
        self._connection = await self._connect()
        await self._open_session()
        self._supervisor = asyncio.create_task(self._supervise())

    async def publish_channel(self) -> PublishChannel | MemoryPublishChannel:
        """The confirm-mode channel of the current connection (waits out a reconnect)."""
        if not self._connected.is_set():
            await asyncio.wait_for(self._connected.wait(), self.settings.publish_timeout)
        async with self._publish_lock:
            if self._publish is None or not self._publish.is_open:
                if isinstance(self._connection, MemoryConnection):
                    self._publish = MemoryPublishChannel(self._connection.broker)
                else:
                    assert self._connection is not None
                    channel = await raw_channel(self._connection, confirms=True)
                    self._publish = PublishChannel(channel)
            return self._publish

    async def _connect(self) -> AbstractConnection | MemoryConnection:
        connection: AbstractConnection | MemoryConnection
        if self.memory is not None:
            connection = MemoryConnection(self.memory)
        else:
            connection = await connect(self.settings, self.settings.service_name)
        self._lost.clear()
        connection.close_callbacks.add(lambda *_: self._lost.set())
        return connection

    async def _prepare_topology(self) -> None:
        decls = expand(self.topology)
        if self.memory is not None:
            self._prepare_embedded(decls)
            return
        if self.declare:
            result = await Declarer(self.settings, self.topology_file, log.debug).apply(decls)
            log.info(
                "topology declared: %d created, %d already there",
                result.created,
                result.existing + result.declared,
            )
            return
        connection = await connect(self.settings, f"{self.settings.service_name}-check")
        missing = []
        try:
            for runner in self.runners:
                for name in [runner.queue] + [q.name for q in recovery_queues(runner.spec)]:
                    channel = await connection.channel()
                    try:
                        await channel.declare_queue(name, passive=True)
                        await channel.close()
                    except CONNECTION_ERRORS:
                        raise
                    except Exception:
                        missing.append(name)
        finally:
            await connection.close()
        if missing:
            raise BrokerError(
                f"--no-declare: missing on the broker: {', '.join(missing)} "
                "(run 'kanin topology apply' first)"
            )

    def _prepare_embedded(self, decls: Declarations) -> None:
        assert self.memory is not None
        if self.declare:
            declare_embedded(self.memory, decls)
            log.info("topology declared on the embedded broker %s", self.settings.broker_url)
            return
        missing = [q.name for q in decls.queues if q.name not in self.memory.queues]
        if missing:
            raise BrokerError(f"--no-declare: missing on the broker: {', '.join(missing)}")

    async def _open_session(self) -> None:
        assert self._connection is not None
        self._channels = []
        self._publish = None
        for runner in self.runners:
            channel: ConsumerChannel | MemoryConsumerChannel
            if isinstance(self._connection, MemoryConnection):
                channel = MemoryConsumerChannel(
                    self._connection.channel(), runner.queue, runner.prefetch, runner.stats
                )
            else:
                channel = ConsumerChannel(
                    await raw_channel(self._connection), runner.queue, runner.prefetch, runner.stats
                )
            await channel.start(runner.on_delivery)
            self._channels.append(channel)
            if not self.reconnects:
                log.info(
                    "consumer %s started on %s (prefetch %d, concurrency %d, attempts %d)",
                    runner.name, runner.queue, runner.prefetch, runner.concurrency,
                    runner.policy.attempts,
                )  # fmt: skip
        self._connected.set()

    async def _supervise(self) -> None:
        """Wait for a lost connection or channel; then reconnect until it works or we stop."""
        delay = 0.2
        while not self._stopping.is_set():
            waiters: list[asyncio.Future[Any]] = [
                asyncio.ensure_future(self._stopping.wait()),
                asyncio.ensure_future(self._lost.wait()),
            ]
            waiters += [ch.closing for ch in self._channels]
            waiters += [ch.cancelled for ch in self._channels]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters[:2]:
                waiter.cancel()
            if self._stopping.is_set():
                return
            self._connected.clear()
            log.warning("connection, channel or consumer lost; reconnecting")
            if self._connection is not None and not self._connection.is_closed:
                await self._connection.close()
            while not self._stopping.is_set():
                try:
                    self._connection = await self._connect()
                    await self._open_session()
                    break
                except Exception as exc:
                    # a connection whose session failed (say, a deleted queue) is closed
                    # before the next try: retries must not pile up connections
                    if self._connection is not None and not self._connection.is_closed:
                        await self._connection.close()
                    log.warning("reconnect failed (%s); next try in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
            else:
                return
            delay = 0.2
            self.reconnects += 1
            log.info("reconnected: %d consumer(s) consuming again", len(self._channels))

    async def shutdown(self) -> None:
        log.info("stopping: no new messages; finishing the ones in flight")
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for channel in self._channels:
            await channel.cancel()
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
        for channel in self._channels:
            await channel.close()
        for runner in self.runners:
            try:
                await runner.consumer.on_shutdown()
            except Exception:
                log.exception("%s.on_shutdown failed", runner.name)
        if self._connection is not None and not self._connection.is_closed:
            await self._connection.close()
        for store in self.stores.values():
            if store is not None:
                await store.close()
        if self.probes is not None:
            await self.probes.close()
        for runner in self.runners:
            log.info("%s on %s: %s", runner.name, runner.queue, runner.stats)

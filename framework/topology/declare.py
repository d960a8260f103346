"""Declare a topology on the broker through aio-pika, idempotently.

Each object is declared in dependency order. A declaration the broker refuses with
PRECONDITION_FAILED (the object exists with other properties) is explained from the
management API: which object, which argument, the broker's value and the file's
value. Such a conflict is reported once, never retried.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

import aiormq.exceptions
from aio_pika.abc import AbstractChannel

from framework.errors import BrokerError, KaninError, TopologyConflict
from framework.management import LiveTopology, Management, binding_key
from framework.settings import Settings
from framework.topology.diff import (
    Decl,
    describe_difference,
    exchange_differences,
    queue_differences,
)
from framework.topology.expand import BindingDecl, Declarations, ExchangeDecl, QueueDecl
from framework.transport.amqp import connect

Echo = Callable[[str], None]


@dataclass
class ApplyResult:
    created: int = 0
    existing: int = 0
    declared: int = 0  # declared without knowing whether it existed (no management API)
    conflicts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Declarer:
    def __init__(self, settings: Settings, file: str, echo: Echo) -> None:
        self.settings = settings
        self.file = file
        self.echo = echo
        self.management = Management.from_settings(settings)
        self.result = ApplyResult()

    async def apply(self, decls: Declarations) -> ApplyResult:
        live: LiveTopology | None
        try:
            live = await self.management.snapshot()
        except KaninError as exc:
            self.echo(f"note: {exc}; cannot tell created objects from existing ones")
            live = None
        self.connection = await connect(self.settings, f"{self.settings.service_name}-topology")
        try:
            channel = await self.connection.channel()
            everything: list[Decl] = [*decls.exchanges, *decls.queues, *decls.bindings]
            for decl in everything:
                channel = await self._declare(channel, decl, live)
        finally:
            await self.connection.close()
        if self.result.conflicts:
            raise TopologyConflict(self.result.conflicts)
        if self.result.errors:
            raise BrokerError("\n".join(self.result.errors))
        return self.result

    async def _declare(
        self, channel: AbstractChannel, decl: Decl, live: LiveTopology | None
    ) -> AbstractChannel:
        timeout = self.settings.connect_timeout
        try:
            if isinstance(decl, ExchangeDecl):
                await channel.declare_exchange(
                    decl.name,
                    decl.type,
                    durable=decl.durable,
                    auto_delete=decl.auto_delete,
                    internal=decl.internal,
                    arguments=decl.arguments,
                    timeout=timeout,
                )
                existed = None if live is None else decl.name in live.exchanges
            elif isinstance(decl, QueueDecl):
                await channel.declare_queue(
                    decl.name,
                    durable=decl.durable,
                    auto_delete=decl.auto_delete,
                    arguments=decl.arguments,
                    timeout=timeout,
                )
                existed = None if live is None else decl.name in live.queues
            else:
                existed = await self._bind(channel, decl, live)
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            self.result.conflicts.extend(await self._explain(decl, exc))
            return await self.connection.channel()
        except (aiormq.exceptions.AMQPChannelError, TimeoutError) as exc:
            reason = str(exc.args[0]) if exc.args else type(exc).__name__
            self.result.errors.append(f"{decl.describe()}: {reason}")
            return await self.connection.channel()
        self._report(decl, existed)
        return channel

    async def _bind(
        self, channel: AbstractChannel, decl: BindingDecl, live: LiveTopology | None
    ) -> bool | None:
        timeout = self.settings.connect_timeout
        args = decl.arguments
        if decl.destination_type == "queue":
            queue = await channel.get_queue(decl.destination, ensure=False)
            await queue.bind(decl.source, decl.routing_key, arguments=args, timeout=timeout)
        else:
            target = await channel.get_exchange(decl.destination, ensure=False)
            await target.bind(decl.source, decl.routing_key, arguments=args, timeout=timeout)
        if live is None:
            return None
        key = binding_key(
            decl.source, decl.destination, decl.destination_type, decl.routing_key, args
        )
        return key in live.bindings

    def _report(self, decl: Decl, existed: bool | None) -> None:
        if existed is None:
            self.result.declared += 1
            self.echo(f"declared {decl.describe()}")
        elif existed:
            self.result.existing += 1
            self.echo(f"exists   {decl.describe()}")
        else:
            self.result.created += 1
            self.echo(f"created  {decl.describe()}")

    async def _explain(self, decl: Decl, exc: Exception) -> list[str]:
        """Name each differing argument with both values; fall back to the broker's reply."""
        broker_says = str(exc.args[0]) if exc.args else str(exc)
        try:
            if isinstance(decl, ExchangeDecl):
                live = await self.management.exchange(decl.name)
                diffs = exchange_differences(decl, live) if live else []
                kind = "exchange"
            elif isinstance(decl, QueueDecl):
                live = await self.management.queue(decl.name)
                diffs = queue_differences(decl, live) if live else []
                kind = "queue"
            else:
                diffs, kind = [], "binding"
        except KaninError:
            diffs, kind = [], ""
        name = decl.name if isinstance(decl, ExchangeDecl | QueueDecl) else ""
        if diffs:
            return [describe_difference(kind, name, d, self.file) for d in diffs]
        return [f"{decl.describe()}: refused by the broker: {broker_says}"]


def apply_topology(decls: Declarations, settings: Settings, file: str, echo: Echo) -> ApplyResult:
    """Declare ``decls``; raise ``TopologyConflict`` or ``BrokerError`` after reporting all."""
    return asyncio.run(Declarer(settings, file, echo).apply(decls))

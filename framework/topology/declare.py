"""Declare a topology on the broker, idempotently, through the transport.

Each object is declared in dependency order. A declaration the broker refuses with
PRECONDITION_FAILED (the object exists with other properties) is explained from the
management API: which object, which argument, the broker's value and the file's
value. Such a conflict is reported once, never retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from framework.errors import BrokerError, BrokerRefused, KaninError, TopologyConflict
from framework.management import LiveTopology, Management, binding_key
from framework.settings import Settings
from framework.topology.diff import (
    Decl,
    describe_difference,
    exchange_differences,
    queue_differences,
    stale,
)
from framework.topology.expand import BindingDecl, Declarations, ExchangeDecl, QueueDecl, expand
from framework.topology.model import Topology
from framework.transport import Transport, open_transport

Echo = Callable[[str], None]
log = logging.getLogger("kanin.topology")


@dataclass
class ApplyResult:
    created: int = 0
    existing: int = 0
    declared: int = 0  # declared without knowing whether it existed (no management API)
    removed: int = 0  # stale objects pruned
    conflicts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Declarer:
    """Declares ``Declarations`` on ``transport``; ``echo`` gets a line per object."""

    def __init__(
        self, transport: Transport, settings: Settings, topology: Topology, echo: Echo = log.debug
    ) -> None:
        self.transport = transport
        self.topology = topology  # where each object's values came from
        self.echo = echo
        self.management = Management.for_settings(settings)
        self.result = ApplyResult()

    async def apply(self, decls: Declarations) -> ApplyResult:
        live: LiveTopology | None = None
        if self.management is not None:
            try:
                live = await self.management.snapshot()
            except KaninError as exc:
                self.echo(f"note: {exc}; cannot tell created objects from existing ones")
        everything: list[Decl] = [*decls.exchanges, *decls.queues, *decls.bindings]
        for decl in everything:
            try:
                await self.transport.declare(decl)
            except BrokerRefused as exc:
                if exc.code == 406:
                    self.result.conflicts.extend(await self._explain(decl, exc))
                else:
                    self.result.errors.append(f"{decl.describe()}: {exc.reply}")
                continue
            self._report(decl, self._existed(decl, live))
        if self.result.conflicts:
            raise TopologyConflict(self.result.conflicts)
        if self.result.errors:
            raise BrokerError("\n".join(self.result.errors))
        return self.result

    @staticmethod
    def _existed(decl: Decl, live: LiveTopology | None) -> bool | None:
        if live is None:
            return None
        if isinstance(decl, ExchangeDecl):
            return decl.name in live.exchanges
        if isinstance(decl, QueueDecl):
            return decl.name in live.queues
        key = binding_key(
            decl.source, decl.destination, decl.destination_type, decl.routing_key, decl.arguments
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

    async def _explain(self, decl: Decl, exc: BrokerRefused) -> list[str]:
        """Name each differing argument with both values; fall back to the broker's reply."""
        diffs = []
        kind = ""
        if self.management is not None and not isinstance(decl, BindingDecl):
            try:
                if isinstance(decl, ExchangeDecl):
                    live = await self.management.exchange(decl.name)
                    diffs = exchange_differences(decl, live) if live else []
                    kind = "exchange"
                else:
                    live = await self.management.queue(decl.name)
                    diffs = queue_differences(decl, live) if live else []
                    kind = "queue"
            except KaninError:
                diffs = []
        name = decl.name if isinstance(decl, ExchangeDecl | QueueDecl) else ""
        if diffs:
            where = self.topology.source(decl.origin)
            return [describe_difference(kind, name, d, where) for d in diffs]
        return [f"{decl.describe()}: refused by the broker: {exc.reply}"]


async def prune(
    transport: Transport, stale: Sequence[Decl], echo: Echo, force: bool = False
) -> int:
    """Remove ``stale`` objects: bindings, then queues (only empty ones unless ``force``),
    then exchanges. Returns how many were removed; a queue kept is said so."""
    removed = 0
    order = {BindingDecl: 0, QueueDecl: 1, ExchangeDecl: 2}
    for decl in sorted(stale, key=lambda d: order[type(d)]):
        try:
            await transport.delete(decl, if_empty=not force)
        except BrokerRefused as exc:
            if exc.code != 406:
                raise
            echo(f"kept     {decl.describe()}: it holds messages (--force deletes it)")
            continue
        removed += 1
        echo(f"removed  {decl.describe()}")
    return removed


def apply_topology(
    topology: Topology,
    settings: Settings,
    echo: Echo,
    prune_stale: bool = False,
    force: bool = False,
) -> ApplyResult:
    """Declare ``topology``, then (``prune_stale``) remove what it owns and no longer
    declares; raise ``TopologyConflict`` or ``BrokerError`` after reporting all."""

    async def run() -> ApplyResult:
        transport = open_transport(settings, f"{settings.service_name}-topology")
        try:
            await transport.connect(0)
            decls = expand(topology)
            result = await Declarer(transport, settings, topology, echo).apply(decls)
            if prune_stale:
                live = await Management.from_settings(settings).snapshot()
                steps = stale(decls, live, topology.owns)
                result.removed = await prune(transport, [s.decl for s in steps], echo, force)
            return result
        finally:
            await transport.close()

    return asyncio.run(run())

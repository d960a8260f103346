"""Turn a topology into the flat, ordered list of objects to declare on the broker.

This is where the recoverability topology is generated. For a queue ``q`` with
``retry`` and ``dead_letter`` on, the broker gets::

    q.dlq              parking queue: messages that will not succeed
    q.retry.1 .. n-1   wait queues: x-message-ttl = delay n, dead-lettering to ("", q)
    q                  the work queue, dead-lettering to ("", q.dlq)

Order: exchanges (alternate exchanges first), then queues (each work queue after the
queues it dead-letters into), then bindings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from framework.topology.model import QueueSpec, Topology

Role = Literal["work", "retry", "dlq"]


@dataclass(frozen=True)
class ExchangeDecl:
    name: str
    type: str
    durable: bool = True
    auto_delete: bool = False
    internal: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    origin: str = ""

    def describe(self) -> str:
        return f"exchange {self.name} ({self.type})"


@dataclass(frozen=True)
class QueueDecl:
    name: str
    durable: bool = True
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    role: Role = "work"
    origin: str = ""

    def describe(self) -> str:
        kind = self.arguments.get("x-queue-type", "classic")
        if self.role == "retry":
            ttl = self.arguments["x-message-ttl"]
            target = self.arguments["x-dead-letter-routing-key"]
            return f"queue {self.name} ({kind}, wait {ttl} ms, then back to {target})"
        if self.role == "dlq":
            return f"queue {self.name} ({kind}, dead letters)"
        return f"queue {self.name} ({kind})"


@dataclass(frozen=True)
class BindingDecl:
    source: str
    destination: str
    destination_type: Literal["queue", "exchange"]
    routing_key: str = ""
    arguments: dict[str, Any] = field(default_factory=dict)
    origin: str = ""

    def describe(self) -> str:
        key = f" [{self.routing_key}]" if self.routing_key else ""
        match = ""
        if "x-match" in self.arguments:
            headers = {k: v for k, v in self.arguments.items() if k != "x-match"}
            match = f" headers {self.arguments['x-match']} {headers}"
        return f"binding {self.source} -> {self.destination_type} {self.destination}{key}{match}"


@dataclass(frozen=True)
class Declarations:
    exchanges: tuple[ExchangeDecl, ...]
    queues: tuple[QueueDecl, ...]
    bindings: tuple[BindingDecl, ...]

    def count(self, role: Role) -> int:
        return sum(1 for q in self.queues if q.role == role)


def recovery_queues(queue: QueueSpec, origin: str = "") -> list[QueueDecl]:
    """The DLQ and wait queues generated for ``queue``, in declaration order."""
    kind = {"x-queue-type": queue.type}
    out: list[QueueDecl] = []
    if queue.dead_letter:
        out.append(QueueDecl(queue.dlq, queue.durable, False, dict(kind), "dlq", origin))
    if queue.retry is not None:
        for attempt, ttl in enumerate(queue.retry.delays_ms(), start=1):
            args = {
                **kind,
                "x-message-ttl": ttl,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue.name,
            }
            name = queue.wait_queue(attempt)
            out.append(QueueDecl(name, queue.durable, False, args, "retry", f"{origin}.retry"))
    return out


def _exchange_order(topology: Topology) -> list[int]:
    """Indexes of exchanges with each alternate exchange before the exchanges using it."""
    index = {x.name: i for i, x in enumerate(topology.exchanges)}
    order: list[int] = []
    seen: set[int] = set()

    def visit(i: int, trail: set[int]) -> None:
        if i in seen or i in trail:
            return
        ae = topology.exchanges[i].alternate_exchange
        if ae is not None and ae in index:
            visit(index[ae], trail | {i})
        seen.add(i)
        order.append(i)

    for i in range(len(topology.exchanges)):
        visit(i, set())
    return order


def expand(topology: Topology) -> Declarations:
    exchanges = tuple(
        ExchangeDecl(
            x.name,
            x.type,
            x.durable,
            x.auto_delete,
            x.internal,
            x.broker_arguments(),
            f"exchanges[{i}]",
        )
        for i in _exchange_order(topology)
        for x in [topology.exchanges[i]]
    )
    queues: list[QueueDecl] = []
    for i, q in enumerate(topology.queues):
        origin = f"queues[{i}]"
        queues.extend(recovery_queues(q, origin))
        queues.append(
            QueueDecl(q.name, q.durable, q.auto_delete, q.broker_arguments(), "work", origin)
        )
    bindings = tuple(
        BindingDecl(
            b.exchange,
            b.destination,
            b.destination_type,
            key,
            b.broker_arguments(),
            f"bindings[{i}]",
        )
        for i, b in enumerate(topology.bindings)
        for key in b.routing_key_list()
    )
    return Declarations(exchanges, tuple(queues), bindings)

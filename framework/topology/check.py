"""Checks across objects of a topology: names are unique and every reference resolves."""

from __future__ import annotations

from framework.topology.expand import recovery_queues
from framework.topology.model import Topology

Path = tuple[str | int, ...]

# Exchanges every RabbitMQ vhost has; a file may bind to them without declaring them.
BUILTIN_EXCHANGES = {
    "amq.direct": "direct",
    "amq.topic": "topic",
    "amq.fanout": "fanout",
    "amq.headers": "headers",
    "amq.match": "headers",
}


def check(topology: Topology) -> list[tuple[Path, str]]:
    """Every cross-object problem, as (path in the file, reason)."""
    problems: list[tuple[Path, str]] = []
    exchange_types = dict(BUILTIN_EXCHANGES)
    for i, x in enumerate(topology.exchanges):
        if x.name in exchange_types and x.name not in BUILTIN_EXCHANGES:
            problems.append((("exchanges", i, "name"), f"exchange {x.name!r} is declared twice"))
        exchange_types[x.name] = x.type
    for i, x in enumerate(topology.exchanges):
        ae = x.alternate_exchange
        if ae is not None and ae not in exchange_types:
            problems.append(
                (("exchanges", i, "alternate_exchange"), f"exchange {ae!r} is not declared")
            )

    queue_owner: dict[str, str] = {}
    for i, q in enumerate(topology.queues):
        names = [(q.name, "")] + [
            (g.name, f" (generated for queue {q.name!r})") for g in recovery_queues(q)
        ]
        for name, why in names:
            if name in queue_owner:
                problems.append(
                    (("queues", i, "name"), f"queue {name!r}{why} is also {queue_owner[name]}")
                )
                break
            else:
                queue_owner[name] = f"queues[{i}]" + why

    for i, b in enumerate(topology.bindings):
        source_type = exchange_types.get(b.exchange)
        if source_type is None and not b.external:
            problems.append((("bindings", i, "exchange"), _undeclared("exchange", b.exchange)))
        if b.queue is not None and b.queue not in queue_owner and not b.external:
            problems.append((("bindings", i, "queue"), _undeclared("queue", b.queue)))
        target = b.to_exchange
        if target is not None and target not in exchange_types and not b.external:
            problems.append((("bindings", i, "to_exchange"), _undeclared("exchange", target)))
        if b.headers and source_type not in (None, "headers"):
            problems.append(
                (
                    ("bindings", i, "headers"),
                    f"exchange {b.exchange!r} is {source_type}: header matches need a "
                    "headers exchange",
                )
            )
    return problems


def _undeclared(kind: str, name: str) -> str:
    return (
        f"{kind} {name!r} is not declared in this file "
        "(mark the binding 'external: true' if it exists on the broker already)"
    )

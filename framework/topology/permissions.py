"""The least RabbitMQ permissions a topology needs, per user: one that declares it, one
that runs the workers.

RabbitMQ grants a user three regular expressions per vhost, matched against exchange and
queue names: ``configure`` (declare, delete), ``write`` (publish to an exchange, bind to
a queue or exchange) and ``read`` (consume or get from a queue, bind from an exchange).
The default exchange is ``amq.default`` to them. What each operation of kanin's needs:

- ``kanin topology apply`` (the deploy user) declares every exchange and queue
  (configure), binds each binding's destination (write) from its source (read), and
  names dead-letter and alternate exchanges on what it declares, which RabbitMQ checks as
  write on that exchange and read on the queue or exchange naming it. It reads the live
  broker through the management API: the user needs the ``management`` tag.
- ``kanin run --no-declare`` (the runtime user) only checks that its queues exist, which
  needs no permission; it consumes its queues (read), moves messages to wait queues and
  DLQs through the default exchange (write on ``amq.default``) and publishes its events
  to their exchanges (write).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from framework.topology.expand import Declarations

DEFAULT_EXCHANGE = "amq.default"  # the name RabbitMQ checks for the exchange ""


def _exchange(name: str) -> str:
    return name or DEFAULT_EXCHANGE


@dataclass(frozen=True)
class Grant:
    """Names a user must be able to configure, write and read."""

    configure: frozenset[str]
    write: frozenset[str]
    read: frozenset[str]

    def regexes(self) -> tuple[str, str, str]:
        return regex(self.configure), regex(self.write), regex(self.read)


def regex(names: Iterable[str]) -> str:
    """A regex matching exactly ``names`` (``^$``, nothing, for none)."""
    chosen = sorted(set(names))
    if not chosen:
        return "^$"
    return "^(" + "|".join(re.escape(name) for name in chosen) + ")$"


def deploy_grant(decls: Declarations) -> Grant:
    """What ``kanin topology apply`` needs for ``decls``."""
    configure = {x.name for x in decls.exchanges} | {q.name for q in decls.queues}
    write: set[str] = set()
    read: set[str] = set()
    for binding in decls.bindings:
        write.add(binding.destination)
        read.add(_exchange(binding.source))
    for queue in decls.queues:
        if "x-dead-letter-exchange" in queue.arguments:
            write.add(_exchange(str(queue.arguments["x-dead-letter-exchange"])))
            read.add(queue.name)
    for exchange in decls.exchanges:
        if "alternate-exchange" in exchange.arguments:
            write.add(_exchange(str(exchange.arguments["alternate-exchange"])))
            read.add(exchange.name)
    return Grant(frozenset(configure), frozenset(write), frozenset(read))


def runtime_grant(
    consumed: Iterable[str], publishes_to: Iterable[str], moves_messages: bool
) -> Grant:
    """What ``kanin run --no-declare`` needs: reading the ``consumed`` queues, publishing
    to the exchanges ``publishes_to`` (``""``: the default one) and, when a queue has
    retries or a DLQ (``moves_messages``), to the default exchange."""
    write = {_exchange(name) for name in publishes_to}
    if moves_messages:
        write.add(DEFAULT_EXCHANGE)
    return Grant(frozenset(), frozenset(write), frozenset(consumed))

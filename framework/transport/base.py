"""The transport boundary: what workers and publishers need from a broker, and nothing more.

A ``Transport`` is chosen once from the broker URL (``framework.transport.open_transport``):
RabbitMQ over AMQP (``amqp.py``) or the embedded broker (``embedded.py``). Above this
line nobody asks which one it is. Messages cross it as ``Delivery`` objects (in) and
``OutgoingMessage`` tuples (out), with AMQP basic properties in both directions; every
failure crosses it as one of kanin's own errors (``framework.errors``), never as a client
library's exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol

from pamqp.commands import Basic

from framework.errors import KaninError
from framework.topology.expand import BindingDecl, ExchangeDecl, QueueDecl

Properties = Basic.Properties
OutgoingMessage = tuple[str, str, bytes, Properties]  # exchange, routing key, body, properties
Declaration = ExchangeDecl | QueueDecl | BindingDecl
# where reading a stream starts: "first", "last", "next", an offset, or a time
StreamOffset = str | int | datetime
Role = Literal["consume", "publish"]


class Settles(Protocol):
    """What settles a delivery: the channel it came on."""

    def is_settled(self, tag: int) -> bool: ...
    def ack(self, tag: int) -> None: ...
    async def nack(self, tag: int, requeue: bool) -> None: ...


class Delivery:
    """One message as received, bound to the channel that must settle it."""

    __slots__ = (
        "body",
        "channel",
        "delivery_tag",
        "exchange",
        "properties",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        body: bytes,
        properties: Properties,
        exchange: str,
        routing_key: str,
        delivery_tag: int,
        redelivered: bool,
        channel: Settles,
    ) -> None:
        self.body = body
        self.properties = properties
        self.exchange = exchange
        self.routing_key = routing_key
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.channel = channel

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}


OnDelivery = Callable[[Delivery], Awaitable[None]]


class Counts(Protocol):
    """Where a consumer channel adds the acks it sent (a runner's ``Stats``)."""

    acked: int


class ConsumerChannel(Settles, Protocol):
    """One channel consuming one queue, at most ``prefetch`` messages unsettled."""

    queue: str
    # done when the broker cancels the consumer (its queue was deleted, say)
    cancelled: asyncio.Future[None]

    @property
    def closing(self) -> asyncio.Future[Any]:
        """Done when the channel closes: by us, by the broker, or with its connection."""
        ...

    @property
    def is_open(self) -> bool: ...

    async def start(self, on_delivery: OnDelivery) -> None: ...
    async def cancel(self) -> None: ...
    async def drain(self) -> None: ...
    async def close(self) -> None: ...


class PublishChannel(Protocol):
    """A channel whose every publish returns once the broker has confirmed it.

    Raises ``Unroutable`` (returned), ``PublishFailed`` (nacked, refused, or no confirm
    within ``within`` seconds), or ``BrokerUnavailable`` when the connection went away: the one
    a publisher may try again on a new channel.
    """

    @property
    def is_open(self) -> bool: ...

    async def publish(self, message: OutgoingMessage, *, within: float | None = None) -> None: ...

    async def publish_batch(
        self, messages: Sequence[OutgoingMessage], *, within: float | None = None
    ) -> None: ...

    async def publish_each(
        self, messages: Sequence[OutgoingMessage], *, within: float | None = None
    ) -> list[KaninError | None]:
        """Publish all, then wait for every confirm: each message's error, or None. Raises
        (``BrokerUnavailable``) only when none could be written."""
        ...


class QueueReader(Settles, Protocol):
    """One queue read one message at a time (``basic.get``) on a channel of its own.

    Nothing leaves the queue unless removed: whatever was read and not removed goes back
    to the queue when the reader closes, oldest first, so a queue read to its end keeps
    its order (if the connection drops instead, the broker gives everything back itself).
    ``depth`` is the number of messages the queue held ready when the reader opened.
    """

    queue: str
    depth: int

    async def get(self) -> Delivery | None:
        """The next message, or None once the queue has nothing more ready."""
        ...

    async def remove(self, tag: int) -> None:
        """Acknowledge: the message read as ``tag`` leaves the queue for good."""
        ...

    async def close(self) -> None: ...


class Transport(Protocol):
    """A broker: a connection to consume on and one to publish on, each coming back by
    itself after a loss, and declarations."""

    @property
    def connected(self) -> bool:
        """Whether the consuming connection is up now."""
        ...

    @property
    def blocked(self) -> str | None:
        """The broker's reason while it blocks publishing (a resource alarm), else None."""
        ...

    def blocked_seconds(self) -> float:
        """Seconds publishing has been blocked in all, the current block included."""
        ...

    @property
    def reconnects(self) -> int:
        """Connections made again after a loss, both connections counted."""
        ...

    async def connect(self, wait: float, role: Role = "consume") -> None:
        """Open the consuming (or publishing) connection now, trying for ``wait`` seconds
        (0: one round over the hosts), else ``BrokerUnavailable`` with the last failure."""
        ...

    async def consumer_channel(
        self,
        queue: str,
        prefetch: int,
        counts: Counts | None = None,
        offset: StreamOffset | None = None,
    ) -> ConsumerChannel:
        """A new channel on the consuming connection (waiting while it comes back);
        ``offset``: where to start reading ``queue``, a stream."""
        ...

    async def temporary_queue(self, bindings: Sequence[tuple[str, str]]) -> str:
        """A queue of the broker's naming, bound to each (exchange, routing key) of
        ``bindings``, that lives as long as the consuming connection; its name."""
        ...

    async def publish_channel(self, within: float) -> PublishChannel:
        """The confirming channel on the publishing connection, opened or opened again as
        needed within ``within`` seconds, else ``BrokerUnavailable`` with the cause."""
        ...

    async def declare(self, declaration: Declaration) -> None:
        """Declare one object; ``BrokerRefused`` (with the reply code) if the broker will not."""
        ...

    async def delete(self, declaration: Declaration, *, if_empty: bool = True) -> None:
        """Delete a queue (with ``if_empty``, ``BrokerRefused`` 406 while it holds
        messages) or an exchange, or remove a binding."""
        ...

    async def missing_queues(self, names: Sequence[str]) -> list[str]:
        """Those of ``names`` that do not exist on the broker."""
        ...

    async def reader(self, queue: str) -> QueueReader:
        """A reader of ``queue`` on the consuming connection; ``BrokerRefused`` (404)
        if there is no such queue."""
        ...

    async def close(self) -> None: ...

"""An embedded AMQP 0-9-1 broker in the process: RabbitMQ's routing and dead-lettering
rules, kept in memory, for running workers and tests with no server (``memory://``).

What it models, as RabbitMQ does it (the conformance suite in ``tests/conformance``
checks each against a real broker):

- exchanges: every type, exchange-to-exchange bindings and ``alternate-exchange``, as
  ``routing.py`` decides; ``mandatory`` publishes that reach no queue are returned;
- queues: FIFO, ``x-message-ttl`` and per-message ``expiration`` (a message expires at
  the head of its queue), ``x-max-length`` with ``x-overflow`` (``drop-head``,
  ``reject-publish``, ``reject-publish-dlx``), ``x-dead-letter-exchange`` and
  ``-routing-key``; dead letters carry ``x-death`` (one entry per queue and reason, with
  ``count``) and ``x-first-death-*`` headers;
- consumers: prefetch, ack / nack / reject (with ``multiple``), redelivery with
  ``redelivered`` set when a channel closes with messages unacknowledged; quorum queues
  (``x-queue-type: quorum``) add ``x-delivery-count`` and dead-letter a message given
  back more often than ``x-delivery-limit`` (reason ``delivery_limit``);
- streams (``x-queue-type: stream``): an append-only log read from ``x-stream-offset``,
  as ``streams.py`` keeps it.

Time is the broker's own clock: ``advance(seconds)`` moves it forward (the test kit
uses that to skip retry delays); otherwise it follows the event loop's.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pamqp.commands import Basic

from framework.transport.routing import Binding, Exchange, route
from framework.transport.streams import StreamLog

Properties = Basic.Properties
Outcome = Literal["routed", "returned", "refused"]


class MemoryBrokerError(Exception):
    """What RabbitMQ answers with a channel error (404 NOT_FOUND, 406 PRECONDITION_FAILED)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code


@dataclass
class Message:
    body: bytes
    properties: Properties
    exchange: str
    routing_key: str
    redelivered: bool = False
    expires_at: float | None = None  # while in a queue
    returns: int = 0  # times a consumer gave it back (a quorum queue's delivery count)

    @property
    def headers(self) -> dict[str, Any]:
        if self.properties.headers is None:
            self.properties.headers = {}
        return self.properties.headers


@dataclass
class Queue:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    messages: deque[Message] = field(default_factory=deque)
    consumers: list[Consumer] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    turn: int = 0  # round robin over consumers
    log: StreamLog | None = None  # a stream's entries (streams.py); messages stays empty

    @property
    def ttl_ms(self) -> int | None:
        value = self.arguments.get("x-message-ttl")
        return None if value is None else int(value)

    @property
    def quorum(self) -> bool:
        return self.arguments.get("x-queue-type") == "quorum"

    def handed_out(self, message: Message) -> None:
        """A quorum queue tells each delivery how often the message was given back."""
        if self.quorum:
            message.headers["x-delivery-count"] = message.returns


@dataclass
class Consumer:
    tag: str
    queue: Queue
    channel: MemoryChannel
    callback: Callable[[Message, int], Coroutine[Any, Any, None]]
    position: int = 0  # of a stream consumer: the next offset it reads


class MemoryBroker:
    """Exchanges, queues and bindings of one virtual host, in memory."""

    def __init__(self) -> None:
        self.exchanges: dict[str, Exchange] = {"": Exchange("", "direct")}
        self.queues: dict[str, Queue] = {}
        self.skew = 0.0  # seconds added to the loop's clock by advance()
        # called with (exchange, routing_key, body, properties) for every publish
        self.observers: list[Callable[[str, str, bytes, Properties], None]] = []
        self.open_channels: set[MemoryChannel] = set()
        self._tags = itertools.count(1)

    def now(self) -> float:
        return asyncio.get_running_loop().time() + self.skew

    # -- declarations ---------------------------------------------------------------
    def declare_exchange(
        self, name: str, type: str, arguments: dict[str, Any] | None = None
    ) -> None:
        existing = self.exchanges.get(name)
        if existing is not None and existing.type != type:
            raise MemoryBrokerError(406, f"exchange '{name}' exists with type {existing.type}")
        if existing is None:
            self.exchanges[name] = Exchange(name, type, dict(arguments or {}))

    def declare_queue(self, name: str, arguments: dict[str, Any] | None = None) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            args = dict(arguments or {})
            log = StreamLog(args) if args.get("x-queue-type") == "stream" else None
            queue = self.queues[name] = Queue(name, args, log=log)
        elif arguments is not None and queue.arguments != arguments:
            raise MemoryBrokerError(406, f"queue '{name}' exists with other arguments")
        return queue

    def delete_queue(self, name: str, if_empty: bool = False) -> None:
        found = self.queues.get(name)
        if if_empty and found is not None and found.messages:
            raise MemoryBrokerError(406, f"PRECONDITION_FAILED - queue '{name}' not empty")
        queue = self.queues.pop(name, None)
        if queue is not None and queue.timer is not None:
            queue.timer.cancel()
        for exchange in self.exchanges.values():
            exchange.bindings = [
                b for b in exchange.bindings if b.to_exchange or b.destination != name
            ]

    def bind(
        self,
        source: str,
        destination: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
        to_exchange: bool = False,
    ) -> None:
        exchange = self._exchange(source)
        if to_exchange:
            self._exchange(destination)
        elif destination not in self.queues:
            raise MemoryBrokerError(404, f"no queue '{destination}'")
        binding = Binding(destination, routing_key, dict(arguments or {}), to_exchange)
        if binding not in exchange.bindings:
            exchange.bindings.append(binding)

    def unbind(
        self,
        source: str,
        destination: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
        to_exchange: bool = False,
    ) -> None:
        exchange = self._exchange(source)
        binding = Binding(destination, routing_key, dict(arguments or {}), to_exchange)
        if binding in exchange.bindings:
            exchange.bindings.remove(binding)

    def delete_exchange(self, name: str) -> None:
        self.exchanges.pop(name, None)
        for exchange in self.exchanges.values():
            exchange.bindings = [
                b for b in exchange.bindings if not b.to_exchange or b.destination != name
            ]

    def _exchange(self, name: str) -> Exchange:
        try:
            return self.exchanges[name]
        except KeyError:
            raise MemoryBrokerError(404, f"no exchange '{name}'") from None

    # -- publishing -----------------------------------------------------------------
    def publish(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
        mandatory: bool = False,
    ) -> Outcome:
        """Route a message: ``routed``, ``returned`` (mandatory, no queue), or ``refused``
        (a full queue with ``reject-publish``: the publisher's confirm is a nack)."""
        for observe in self.observers:
            observe(exchange, routing_key, body, properties)
        targets = self.route(exchange, routing_key, properties.headers or {})
        if not targets:
            return "returned" if mandatory else "routed"
        refused = False
        for queue in targets:
            refused |= not self._enqueue(queue, _copy(body, properties, exchange, routing_key))
        return "refused" if refused else "routed"

    def route(self, exchange: str, routing_key: str, headers: dict[str, Any]) -> list[Queue]:
        """The queues a message reaches (each once), through e2e bindings and alternates."""
        if exchange not in self.exchanges:
            raise MemoryBrokerError(404, f"no exchange '{exchange}'")
        names = route(self.exchanges, self.queues, exchange, routing_key, headers)
        return [self.queues[name] for name in names]

    def _enqueue(self, queue: Queue, message: Message) -> bool:
        """Add to the queue; False when ``x-overflow`` refuses it (the publisher's nack)."""
        if queue.log is not None:
            queue.log.append(
                message.body, message.properties, message.exchange, message.routing_key
            )
            self._dispatch(queue)
            return True
        limit = queue.arguments.get("x-max-length")
        overflow = queue.arguments.get("x-overflow", "drop-head")
        if limit is not None and len(queue.messages) >= int(limit) and overflow != "drop-head":
            if overflow == "reject-publish-dlx":
                self.dead_letter(queue, message, "maxlen")
            return False
        ttls = [t for t in (queue.ttl_ms, _expiration(message.properties)) if t is not None]
        message.expires_at = self.now() + min(ttls) / 1000 if ttls else None
        queue.messages.append(message)
        while limit is not None and len(queue.messages) > int(limit):  # drop-head
            self.dead_letter(queue, queue.messages.popleft(), "maxlen")
        self._expire(queue)
        self._dispatch(queue)
        return True

    # -- expiry and dead-lettering --------------------------------------------------
    def ready(self, queue: Queue) -> int:
        """Messages ready in ``queue`` now (those expired at its head dropped first)."""
        if queue.log is not None:
            queue.log.trim()
            return len(queue.log.entries)
        self._expire(queue)
        return len(queue.messages)

    def _expire(self, queue: Queue) -> None:
        """Dead-letter expired messages at the head; set a timer for the next one."""
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        now = self.now()
        while queue.messages:
            head = queue.messages[0]
            if head.expires_at is None or head.expires_at > now:
                break
            queue.messages.popleft()
            self.dead_letter(queue, head, "expired")
        if (
            queue.messages
            and queue.messages[0].expires_at is not None
            and self.queues.get(queue.name) is queue
        ):
            delay = queue.messages[0].expires_at - now
            queue.timer = asyncio.get_running_loop().call_later(delay, self._expire, queue)

    def advance(self, seconds: float) -> None:
        """Move the broker's clock forward: messages whose TTL ran out expire now."""
        self.skew += seconds
        for queue in list(self.queues.values()):
            self._expire(queue)

    def dead_letter(self, queue: Queue, message: Message, reason: str) -> None:
        """Republish to the queue's dead-letter exchange with ``x-death``; else drop."""
        dlx = queue.arguments.get("x-dead-letter-exchange")
        if dlx is None or dlx not in self.exchanges:
            return
        key = queue.arguments.get("x-dead-letter-routing-key", message.routing_key)
        headers = message.headers
        found = headers.get("x-death")  # a sender's own x-death that is no list of tables
        deaths = [dict(d) for d in found if isinstance(d, dict)] if isinstance(found, list) else []
        entry = next(
            (d for d in deaths if (d.get("queue"), d.get("reason")) == (queue.name, reason)), None
        )
        if entry is not None:  # one entry per queue and reason: counted, moved to the front
            deaths.remove(entry)
            count = entry.get("count")
            entry = {**entry, "count": (count if type(count) is int else 0) + 1}
        else:
            entry = {
                "count": 1, "reason": reason, "queue": queue.name,
                "exchange": message.exchange, "routing-keys": [message.routing_key],
            }  # fmt: skip
        entry["time"] = datetime.now(UTC).replace(microsecond=0)
        if message.properties.expiration is not None:
            entry["original-expiration"] = message.properties.expiration
            message.properties.expiration = None
        deaths.insert(0, entry)
        headers["x-death"] = deaths
        headers.setdefault("x-first-death-reason", reason)
        headers.setdefault("x-first-death-queue", queue.name)
        headers.setdefault("x-first-death-exchange", message.exchange)
        for target in self.route(dlx, key, headers):
            if not _is_cycle(deaths, target.name):
                self._enqueue(target, _copy(message.body, message.properties, dlx, key))

    # -- consuming ------------------------------------------------------------------
    def requeue(self, queue: Queue, message: Message) -> None:
        """A message a consumer gave back goes to the head of its queue, redelivered; a
        quorum queue dead-letters it once given back more often than ``x-delivery-limit``."""
        if queue.log is not None:
            return  # a stream keeps every message: nothing to give back
        message.redelivered = True
        message.returns += 1
        limit = queue.arguments.get("x-delivery-limit") if queue.quorum else None
        if limit is not None and message.returns > int(limit):
            self.dead_letter(queue, message, "delivery_limit")
        else:
            queue.messages.appendleft(message)

    def _dispatch(self, queue: Queue) -> None:
        """Hand messages to consumers with room under their channel's prefetch."""
        if queue.log is not None:
            self._feed(queue, queue.log)
            return
        while queue.messages and queue.consumers:
            ready = [c for c in queue.consumers if c.channel.has_room()]
            if not ready:
                return
            consumer = ready[queue.turn % len(ready)]
            queue.turn += 1
            message = queue.messages.popleft()
            consumer.channel.deliver(consumer, message)

    def _feed(self, queue: Queue, log: StreamLog) -> None:
        """Each stream consumer reads on from its position, as its prefetch allows."""
        for consumer in list(queue.consumers):
            while consumer.channel.has_room() and (entry := log.at(consumer.position)):
                consumer.position = entry.offset + 1
                message = _copy(entry.body, entry.properties, entry.exchange, entry.routing_key)
                message.headers["x-stream-offset"] = entry.offset
                consumer.channel.deliver(consumer, message)

    def channel(self) -> MemoryChannel:
        channel = MemoryChannel(self)
        self.open_channels.add(channel)
        return channel

    @property
    def unsettled(self) -> int:
        """Messages delivered to consumers and not yet acked, nacked or rejected."""
        return sum(len(channel.unacked) for channel in self.open_channels)

    def next_tag(self) -> str:
        return f"amq.ctag-{next(self._tags)}"


class MemoryChannel:
    """A channel on the embedded broker: consume with prefetch, settle, get, close."""

    def __init__(self, broker: MemoryBroker) -> None:
        self.broker = broker
        self.prefetch = 0  # 0: unlimited, as in basic.qos
        self.unacked: dict[int, tuple[Queue, Message]] = {}
        self.consumers: dict[str, Consumer] = {}
        self.is_closed = False
        self._tags = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()

    def basic_qos(self, prefetch_count: int) -> None:
        self.prefetch = prefetch_count

    def has_room(self) -> bool:
        return not self.is_closed and (not self.prefetch or len(self.unacked) < self.prefetch)

    def basic_consume(
        self,
        queue: str,
        callback: Callable[[Message, int], Coroutine[Any, Any, None]],
        arguments: dict[str, Any] | None = None,
    ) -> str:
        target = self.broker.queues.get(queue)
        if target is None:
            raise MemoryBrokerError(404, f"no queue '{queue}'")
        consumer = Consumer(self.broker.next_tag(), target, self, callback)
        if target.log is not None:
            if not self.prefetch:
                raise MemoryBrokerError(406, f"a consumer of stream '{queue}' needs a prefetch")
            offset = (arguments or {}).get("x-stream-offset", "next")
            try:
                consumer.position = target.log.start(offset)
            except ValueError as exc:
                raise MemoryBrokerError(406, str(exc)) from None
        self.consumers[consumer.tag] = consumer
        target.consumers.append(consumer)
        self.broker._dispatch(target)
        return consumer.tag

    def basic_cancel(self, tag: str) -> None:
        consumer = self.consumers.pop(tag, None)
        if consumer is not None:
            consumer.queue.consumers.remove(consumer)

    def deliver(self, consumer: Consumer, message: Message) -> None:
        tag = next(self._tags)
        self.unacked[tag] = (consumer.queue, message)
        consumer.queue.handed_out(message)
        task = asyncio.get_running_loop().create_task(consumer.callback(message, tag))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def basic_get(self, queue: str) -> tuple[Message, int] | None:
        target = self.broker.queues.get(queue)
        if target is None:
            raise MemoryBrokerError(404, f"no queue '{queue}'")
        if target.log is not None:
            raise MemoryBrokerError(540, f"stream '{queue}' is read by consumers, not basic.get")
        self.broker._expire(target)
        if not target.messages:
            return None
        message = target.messages.popleft()
        tag = next(self._tags)
        self.unacked[tag] = (target, message)
        target.handed_out(message)
        return message, tag

    def _settled(self, tag: int, multiple: bool) -> list[tuple[Queue, Message]]:
        tags = [t for t in self.unacked if t <= tag] if multiple else [tag]
        if any(t not in self.unacked for t in tags):
            raise MemoryBrokerError(406, f"PRECONDITION_FAILED - unknown delivery tag {tag}")
        return [self.unacked.pop(t) for t in tags]

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        for queue, _ in self._settled(tag, multiple):
            self.broker._dispatch(queue)

    def basic_nack(self, tag: int, multiple: bool = False, requeue: bool = True) -> None:
        for queue, message in reversed(self._settled(tag, multiple)):
            if queue.log is not None:
                pass  # a stream keeps it either way
            elif requeue:
                self.broker.requeue(queue, message)
            else:
                self.broker.dead_letter(queue, message, "rejected")
            self.broker._dispatch(queue)

    def basic_reject(self, tag: int, requeue: bool = True) -> None:
        self.basic_nack(tag, requeue=requeue)

    def close(self) -> None:
        """Unacknowledged messages go back to the head of their queues, redelivered."""
        if self.is_closed:
            return
        self.is_closed = True
        self.broker.open_channels.discard(self)
        for tag in list(self.consumers):
            self.basic_cancel(tag)
        returned = {}
        for queue, message in reversed(list(self.unacked.values())):
            self.broker.requeue(queue, message)
            returned[queue.name] = queue
        self.unacked.clear()
        for queue in returned.values():  # other consumers may take them now
            self.broker._dispatch(queue)


def _copy(body: bytes, properties: Properties, exchange: str, routing_key: str) -> Message:
    """The message as one queue holds it: properties and headers of its own."""
    copy = Properties(**dict(properties))  # type: ignore[arg-type]
    copy.headers = dict(properties.headers) if properties.headers else None
    return Message(body, copy, exchange, routing_key)


def _expiration(properties: Properties) -> int | None:
    try:
        return None if properties.expiration is None else max(0, int(properties.expiration))
    except ValueError:
        return None


def _is_cycle(deaths: list[dict[str, Any]], target: str) -> bool:
    """RabbitMQ's rule: a dead letter is not delivered to a queue it already died in
    (``deaths`` newest first) unless a consumer rejected it somewhere since then."""
    for death in deaths:
        if death.get("reason") == "rejected":
            return False
        if death.get("queue") == target:
            return True
    return False

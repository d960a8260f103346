"""Consumer classes and the context a handler gets.

    class ReserveInventory(Consumer):
        queue = "inventory.reserve"
        prefetch = 50
        retry = RetryPolicy(attempts=5, backoff="exponential", initial=1.0, max=60.0)

        async def handle(self, event: OrderPlaced, ctx: Context) -> None:
            await ctx.publish(InventoryReserved(order_id=event.order_id))

The event class comes from the type hint of ``handle``; a union of event classes makes
one consumer handle several types of its queue, dispatched on the message's ``type``.
"""

from __future__ import annotations

import inspect
import logging
import types
import typing
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from framework.errors import ConfigError
from framework.events import Event
from framework.headers import text
from framework.retry import RetryPolicy

if TYPE_CHECKING:
    from framework.idempotency import Session
    from framework.publisher import Publisher
    from framework.transport.base import Delivery


class Consumer:
    """Base class of consumer classes. Subclasses set ``queue`` and define ``handle``."""

    queue: ClassVar[str] = ""
    prefetch: ClassVar[int | None] = None  # default: KANIN_PREFETCH
    concurrency: ClassVar[int | None] = None  # default: KANIN_CONCURRENCY
    retry: ClassVar[RetryPolicy | None] = None  # default: the queue's retry: block
    timeout: ClassVar[float | None] = None  # seconds per handler call
    max_body_bytes: ClassVar[int | None] = None  # default: KANIN_MAX_BODY_BYTES (16 MiB)
    idempotency: ClassVar[str | None] = None  # store URL; default KANIN_IDEMPOTENCY_URL
    idempotency_retention: ClassVar[float | None] = None  # default KANIN_IDEMPOTENCY_RETENTION
    publishes: ClassVar[tuple[type[Event], ...]] = ()  # for contracts: the events it publishes

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Check what a subclass defines, when it is defined: a mistake here is a
        ``ConfigError`` at import, never a message in the DLQ later."""
        super().__init_subclass__(**kwargs)
        _check_class(cls)

    async def on_startup(self) -> None:
        """Open resources (clients, pools) before the first message."""

    async def on_shutdown(self) -> None:
        """Close them after the last message."""

    async def handle(self, event: Any, ctx: Context) -> None:
        raise NotImplementedError

    def idempotency_key(self, event: Any) -> str | None:
        """The key this event is handled once by, when the message has no
        ``x-idempotency-key`` header. Default: none (the ``message_id`` is used)."""
        return None

    @classmethod
    def consumer_name(cls) -> str:
        return f"{cls.__module__}.{cls.__qualname__}"

    @classmethod
    def event_classes(cls) -> dict[str, type[Event]]:
        """Event classes by wire type, from ``handle``'s annotation; ConfigError if unusable."""
        name = cls.consumer_name()
        if not cls.queue:
            raise ConfigError(f"{name}: set the class attribute 'queue'")
        if cls.handle is Consumer.handle:
            raise ConfigError(f"{name}: define 'async def handle(self, event, ctx)'")
        try:
            hints = typing.get_type_hints(cls.handle)
        except NameError as exc:
            raise ConfigError(f"{name}.handle: cannot resolve annotation: {exc}") from None
        hint = hints.get("event")
        if hint is None:
            params = list(cls.handle.__code__.co_varnames[1:2])
            hint = hints.get(params[0]) if params else None
        members = typing.get_args(hint) if _is_union(hint) else (hint,)
        classes: dict[str, type[Event]] = {}
        for member in members:
            if not (isinstance(member, type) and issubclass(member, Event)):
                raise ConfigError(
                    f"{name}.handle: annotate the event parameter with Event subclasses, "
                    f"got {member!r}"
                )
            if not member.event_type:
                raise ConfigError(f"{name}: {member.__name__} has no type= class argument")
            classes[member.event_type] = member
        return classes


_ASYNC = ("handle", "on_startup", "on_shutdown")
_POSITIVE = ("prefetch", "concurrency", "timeout", "idempotency_retention")


def _check_class(cls: type[Consumer]) -> None:
    name = f"{cls.__module__}.{cls.__qualname__}"
    for method in _ASYNC:
        function = cls.__dict__.get(method)
        if function is not None and not inspect.iscoroutinefunction(function):
            raise ConfigError(
                f"{name}.{method} must be 'async def': kanin awaits it. Run blocking code "
                "from it with 'await asyncio.to_thread(function, ...)'"
            )
    handle = cls.__dict__.get("handle")
    if handle is not None:
        params = list(inspect.signature(handle).parameters.values())
        plain = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if len(params) != 3 or any(p.kind not in plain for p in params):
            got = ", ".join(p.name for p in params)
            raise ConfigError(f"{name}.handle takes (self, event, ctx), not ({got})")
    key = cls.__dict__.get("idempotency_key")
    if key is not None and inspect.iscoroutinefunction(key):
        raise ConfigError(f"{name}.idempotency_key must be a plain 'def' returning a str or None")
    for attribute in _POSITIVE:
        value = cls.__dict__.get(attribute)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise ConfigError(f"{name}.{attribute} must be a positive number, got {value!r}")
    queue = cls.__dict__.get("queue")
    if queue is not None and not isinstance(queue, str):
        raise ConfigError(f"{name}.queue must be a queue name (str), got {queue!r}")
    retry = cls.__dict__.get("retry")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise ConfigError(f"{name}.retry must be a RetryPolicy(...), got {retry!r}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


class Context:
    """What a handler knows about the message it handles, and how it publishes.

    Attributes are read from the delivery when asked for, so a handler that uses none
    of them costs nothing.
    """

    __slots__ = ("_delivery", "attempt", "logger", "publisher", "queue", "session")

    def __init__(
        self,
        queue: str,
        delivery: Delivery,
        attempt: int,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        publisher: Publisher,
        session: Session | None = None,
    ) -> None:
        self.queue = queue
        self._delivery = delivery
        self.attempt = attempt
        self.logger = logger
        self.publisher = publisher
        self.session = session  # the inbox's transaction, with a PostgreSQL store

    @property
    def headers(self) -> Mapping[str, Any]:
        return self._delivery.headers

    @property
    def message_id(self) -> str | None:
        return text(self._delivery.properties.message_id)

    @property
    def correlation_id(self) -> str | None:
        return text(self._delivery.properties.correlation_id)

    @property
    def causation_id(self) -> str | None:
        return text(self.headers.get("x-causation-id"))

    @property
    def event_type(self) -> str | None:
        return text(self._delivery.properties.message_type)

    @property
    def exchange(self) -> str:
        """Where the message was first published (kept across retries)."""
        original = text(self.headers.get("x-original-exchange"))
        return self._delivery.exchange if original is None else original

    @property
    def routing_key(self) -> str:
        original = text(self.headers.get("x-original-routing-key"))
        return self._delivery.routing_key if original is None else original

    @property
    def published_at(self) -> datetime | None:
        """The ``timestamp`` property: when the event was first published."""
        when = self._delivery.properties.timestamp
        return when if isinstance(when, datetime) else None

    @property
    def redelivered(self) -> bool:
        return self._delivery.redelivered

    def __repr__(self) -> str:
        return (
            f"Context(queue={self.queue!r}, message_id={self.message_id!r}, attempt={self.attempt})"
        )

    def transaction(self) -> AbstractAsyncContextManager[Any]:
        """The database transaction this message is handled in (the inbox): the
        idempotency claim, the handler's SQL through the connection it yields, and
        ``ctx.publish`` (into the outbox) commit together after the handler returns, or
        roll back if it raises. Needs the PostgreSQL idempotency store."""
        if self.session is None:
            raise ConfigError(
                "ctx.transaction() needs the inbox: idempotency = 'postgres' on the consumer "
                "(with KANIN_OUTBOX_URL) or KANIN_IDEMPOTENCY_URL=postgresql://..."
            )
        return self.session.transaction()

    async def publish(
        self,
        event: Event,
        *,
        exchange: str | None = None,
        routing_key: str | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """Publish ``event`` as caused by the message being handled (same correlation id).
        In the inbox's transaction it is written to the outbox, sent once that commits."""
        send = self.publisher.publish if self.session is None else self.session.publish
        return await send(
            event,
            exchange=exchange,
            routing_key=routing_key,
            correlation_id=self.correlation_id or self.message_id,
            causation_id=self.message_id,
            idempotency_key=idempotency_key,
            headers=headers,
        )

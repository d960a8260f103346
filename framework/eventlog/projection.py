"""Projection classes: consumers that read a stream in offset order and checkpoint.

    class OrderHistory(Projection):
        queue = "shop.events.log"          # a stream (type: stream in the topology)
        offset = "first"                   # where a projection with no checkpoint starts
        checkpoint = "postgresql://localhost/shop"
        on_error = "stop"                  # or "park"

        async def handle(self, event: OrderPlaced | PaymentCaptured, ctx: ProjectionContext):
            await ctx.db.execute("insert into ...")   # commits with the checkpoint

A projection handles one event at a time, in the stream's order (concurrency 1 by
design). Events of types it has no handler for are passed over. Its checkpoint (the
offset of the last event handled) lives in a store: memory (one process, lost on
restart), Redis, or PostgreSQL, where the handler's writes through ``ctx.db`` and the
checkpoint commit in one transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from framework.consumer import Consumer, Context
from framework.errors import ConfigError
from framework.retry import RetryPolicy

if TYPE_CHECKING:
    from framework.publisher import Publisher
    from framework.transport.base import Delivery

OnError = Literal["stop", "park"]
START_OFFSETS = ("first", "last", "next")
# In-process attempts of a failing event before on_error decides (a stream cannot wait)
DEFAULT_RETRY = RetryPolicy(attempts=3, backoff="exponential", initial=0.2, max=5.0)
DEFAULT_PREFETCH = 1000  # stream consumers read ahead: acks only return credit
DEFAULT_BATCH = 100


class Projection(Consumer):
    """Base class of projections. Subclasses set ``queue`` (a stream) and ``handle``.

    ``retry`` here counts attempts made in process, waiting as the policy says between
    them; after the last one, ``on_error`` decides: ``"stop"`` halts the projection at
    that event (nothing is skipped; ``/readyz`` says why), ``"park"`` puts a copy with the
    error headers in ``<name>.dlq`` and goes on.
    """

    offset: ClassVar[str | int | datetime] = "first"
    checkpoint: ClassVar[str | None] = None  # store URL; default KANIN_CHECKPOINT_URL
    on_error: ClassVar[OnError] = "stop"
    batch: ClassVar[int] = DEFAULT_BATCH  # events per checkpoint (and per transaction)
    name: ClassVar[str | None] = None  # checkpoint and DLQ name; default: the class path

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_projection(cls)

    async def prepare(self, db: Any) -> None:
        """Create the read model if it is missing (tables, say): once at start, in a
        transaction of the checkpoint store (``db``: its connection with PostgreSQL,
        else None)."""

    async def on_reset(self, db: Any) -> None:
        """Empty the read model before a rebuild (``kanin replay --reset``). ``db``: with
        the PostgreSQL store, the connection in the transaction that clears the
        checkpoint; else None."""

    @classmethod
    def projection_name(cls) -> str:
        return cls.name or cls.consumer_name()

    @classmethod
    def policy(cls) -> RetryPolicy:
        return cls.retry or DEFAULT_RETRY


def _check_projection(cls: type[Projection]) -> None:
    where = cls.consumer_name()
    offset = cls.__dict__.get("offset")
    if offset is not None and not (
        offset in START_OFFSETS
        or isinstance(offset, datetime)
        or (isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0)
    ):
        raise ConfigError(
            f"{where}.offset must be 'first', 'last', 'next', an offset >= 0 or a datetime, "
            f"got {offset!r}"
        )
    on_error = cls.__dict__.get("on_error")
    if on_error is not None and on_error not in ("stop", "park"):
        raise ConfigError(f"{where}.on_error must be 'stop' or 'park', got {on_error!r}")
    concurrency = cls.__dict__.get("concurrency")
    if concurrency not in (None, 1):
        raise ConfigError(
            f"{where}.concurrency = {concurrency}: a projection handles its events one at a "
            "time, in the stream's order; remove it"
        )
    batch = cls.__dict__.get("batch")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ConfigError(f"{where}.batch must be a whole number >= 1, got {batch!r}")
    for attribute in ("idempotency", "idempotency_retention"):
        if cls.__dict__.get(attribute) is not None:
            raise ConfigError(
                f"{where}.{attribute}: a projection is kept to once by its checkpoint; "
                "set 'checkpoint' instead"
            )


class ProjectionContext(Context):
    """A handler's context in a projection: the event's ``offset`` in the stream and,
    with the PostgreSQL checkpoint store, ``db``: the connection whose open transaction
    commits together with the checkpoint."""

    __slots__ = ("_db", "offset")

    def __init__(
        self,
        queue: str,
        delivery: Delivery,
        offset: int,
        attempt: int,
        logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
        publisher: Publisher,
        db: Any = None,
    ) -> None:
        super().__init__(queue, delivery, attempt, logger, publisher)
        self.offset = offset
        self._db = db

    @property
    def db(self) -> Any:
        """The ``psycopg.AsyncConnection`` in the checkpoint's transaction."""
        if self._db is None:
            raise ConfigError(
                "ctx.db needs the PostgreSQL checkpoint store: set checkpoint = "
                "'postgresql://...' on the projection (or KANIN_CHECKPOINT_URL)"
            )
        return self._db

"""The inbox: a message's idempotency claim, its handler's SQL and its publishes in one
PostgreSQL transaction.

A consumer whose idempotency store is PostgreSQL (``idempotency = "postgres"``: the
``KANIN_OUTBOX_URL`` database; or a ``postgresql://`` URL) claims each message's key by
opening a transaction: an advisory lock on the key (held by another worker: in progress)
and a look into ``kanin_inbox`` (there: handled, a duplicate). The handler works in that
transaction (``ctx.transaction()``), ``ctx.publish`` writes to the outbox in it, and the
row of the key is written in it too; it commits after the handler returned, or rolls
back if it raised. A crash anywhere leaves all of it done or none of it: exactly-once
effects for database work. A worker that dies mid-handler takes its connection, and so
its transaction and lock, with it.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import Metric

from framework.errors import ConfigError
from framework.events import Event
from framework.idempotency import Claim, IdempotencyStore, Status, StoreUnavailable
from framework.outbox.outbox import Outbox, OutboxTransaction
from framework.outbox.tables import first_line, psycopg
from framework.settings import Settings
from framework.topology.model import Topology

if TYPE_CHECKING:
    from framework.worker import Worker

log = logging.getLogger("kanin.inbox")
LOCK = "select pg_try_advisory_xact_lock(hashtextextended(%s, 0))"
SEEN = "select 1 from kanin_inbox where key = %s"
MARK = "insert into kanin_inbox (key) values (%s)"
EXPIRE = "delete from kanin_inbox where handled_at < now() - make_interval(secs => %s)"


class InboxSession:
    """One message's transaction, as its handler sees it."""

    def __init__(self, conn: Any, outbox: Outbox) -> None:
        self.conn = conn
        self.outbox = OutboxTransaction(outbox, conn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        yield self.conn  # already in the transaction: it commits after the handler

    async def publish(self, event: Event, **fields: Any) -> str:
        return await self.outbox.publish(event, **fields)


class PostgresInbox:
    """An ``IdempotencyStore`` whose claims are transactions, one connection each (at
    most ``connections`` at once: more claims wait for one)."""

    def __init__(self, url: str, outbox: Outbox, connections: int = 32) -> None:
        self.url = url
        self.outbox = outbox
        self.connections = connections
        self._idle: list[Any] = []
        self._slots: asyncio.Semaphore | None = None
        self._open: dict[str, InboxSession] = {}
        self._expired = 0.0

    async def _acquire(self) -> Any:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.connections)
        await self._slots.acquire()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and not conn.broken:
                return conn
        try:
            return await psycopg().AsyncConnection.connect(self.url)
        except psycopg().Error as exc:
            self._slots.release()
            raise StoreUnavailable(f"inbox database: {first_line(exc)}") from None

    async def _done(self, conn: Any, commit: bool) -> None:
        """Commit or roll back, and give the connection back."""
        assert self._slots is not None
        try:
            await (conn.commit() if commit else conn.rollback())
        except psycopg().Error as exc:
            await conn.close()
            raise StoreUnavailable(f"inbox database: {first_line(exc)}") from None
        else:
            self._idle.append(conn)
        finally:
            self._slots.release()

    async def claim(self, key: str, lease: float) -> Claim:
        conn = await self._acquire()
        try:
            locked = await (await conn.execute(LOCK, [key])).fetchone()
            if not locked[0]:
                await self._done(conn, commit=False)
                return Claim(Status.IN_PROGRESS)
            if await (await conn.execute(SEEN, [key])).fetchone():
                await self._done(conn, commit=False)
                return Claim(Status.DONE)
            await conn.execute(MARK, [key])
        except psycopg().Error as exc:
            await self._done(conn, commit=False)
            raise StoreUnavailable(f"inbox claim failed: {first_line(exc)}") from None
        token = secrets.token_hex(8)
        session = self._open[token] = InboxSession(conn, self.outbox)
        return Claim(Status.NEW, token, session)

    async def complete(self, key: str, token: str, retention: float) -> None:
        session = self._open.pop(token)
        try:
            await session.outbox.flush()
            if time.monotonic() - self._expired > 60.0:
                self._expired = time.monotonic()
                await session.conn.execute(EXPIRE, [retention])
        except psycopg().Error as exc:
            await self._done(session.conn, commit=False)
            raise StoreUnavailable(f"inbox commit failed: {first_line(exc)}") from None
        await self._done(session.conn, commit=True)

    async def release(self, key: str, token: str) -> None:
        session = self._open.pop(token, None)
        if session is not None:
            await self._done(session.conn, commit=False)

    async def close(self) -> None:
        for conn in self._idle:
            await conn.close()
        self._idle.clear()


class Inbox:
    """The worker extension that gives consumers the PostgreSQL inbox: their store for
    ``postgres`` (the ``KANIN_OUTBOX_URL`` database) and ``postgresql://`` URLs."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def store(self, url: str, worker: Worker) -> IdempotencyStore | None:
        if url == "postgres":
            if not self.settings.outbox_url:
                raise ConfigError(
                    "idempotency = 'postgres' names the outbox database: set KANIN_OUTBOX_URL"
                )
            url = self.settings.outbox_url
        if not url.startswith(("postgresql://", "postgres://")):
            return None
        if url != self.settings.outbox_url:
            log.warning(
                "the inbox in %s writes ctx.publish into that database's outbox: run a relay "
                "there (KANIN_OUTBOX_URL on this worker, or kanin outbox relay)",
                url.rsplit("@", 1)[-1],
            )
        return PostgresInbox(url, Outbox(self.settings, tracing=worker.tracing))

    def check(self, topology: Topology) -> None:
        pass

    async def start(self, worker: Worker) -> None:
        pass

    def unready(self) -> list[str]:
        return []

    def metrics(self) -> Iterator[Metric]:
        return iter(())

    async def stop(self, grace: float) -> None:
        pass

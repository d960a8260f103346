"""Where a projection keeps its checkpoint: the offset of the last event it handled.

A projection handles events in units (a batch of up to ``Projection.batch`` events) and
saves the offset of the unit's last event when the unit ends:

- ``memory://``: in this process; lost when it ends (the projection starts again from
  its ``offset``).
- ``redis://...``: saved after the unit's handlers ran. A crash in between applies the
  events of that unit again after a restart: at least once.
- ``postgresql://...``: the unit is one transaction on the store's connection; the
  handlers' own writes (``ctx.db``) and the checkpoint commit together, or neither does:
  exactly once. Each event runs in a savepoint, so one failing event is rolled back alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from framework.brokerurl import redact
from framework.errors import ConfigError, KaninError
from framework.idempotency import NO_TLS, redis_client

TABLE = "kanin_checkpoints"
_CREATE = f"""
create table if not exists {TABLE} (
    name text primary key,
    stream_offset bigint not null,
    updated_at timestamptz not null default now()
)"""
_SAVE = f"""
insert into {TABLE} (name, stream_offset) values (%s, %s)
on conflict (name) do update set stream_offset = excluded.stream_offset, updated_at = now()"""


class CheckpointUnavailable(KaninError):
    """The checkpoint store cannot be reached or refused a write."""


class Unit:
    """One unit of work: ``db`` for the handlers (PostgreSQL: in the open transaction),
    ``step()`` around each event (a savepoint there), ``offset`` saved when it ends."""

    def __init__(self, db: Any = None) -> None:
        self.db = db
        self.offset: int | None = None

    def step(self) -> contextlib.AbstractAsyncContextManager[Any]:
        if self.db is None:
            return contextlib.nullcontext()
        transaction: contextlib.AbstractAsyncContextManager[Any] = self.db.transaction()
        return transaction


Hook = Callable[[Any], Awaitable[None]]


class CheckpointStore(Protocol):
    url: str
    durable: bool  # survives the process

    async def load(self, name: str) -> int | None: ...
    def unit(self, name: str) -> contextlib.AbstractAsyncContextManager[Unit]: ...
    async def run(self, hook: Hook) -> None:
        """``hook(db)`` in a transaction of its own (``db``: None without PostgreSQL)."""
        ...

    async def reset(self, name: str, hook: Hook) -> None:
        """Forget ``name``'s checkpoint, after ``hook(db)`` (in the same transaction)."""
        ...

    async def close(self) -> None: ...


def open_checkpoints(url: str, tls: Mapping[str, Any] = NO_TLS) -> CheckpointStore:
    """The store ``url`` names: memory://, redis://... or postgresql://..."""
    if url in ("memory", "memory://") or url.startswith("memory://"):
        return MemoryCheckpoints()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisCheckpoints(url, tls=tls)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresCheckpoints(url)
    raise ConfigError(
        "checkpoint store URL must be memory://, redis://... or postgresql://..., "
        f"got {redact(url)!r}"
    )


class MemoryCheckpoints:
    durable = False

    def __init__(self) -> None:
        self.url = "memory://"
        self.offsets: dict[str, int] = {}

    async def load(self, name: str) -> int | None:
        return self.offsets.get(name)

    @contextlib.asynccontextmanager
    async def unit(self, name: str) -> AsyncIterator[Unit]:
        unit = Unit()
        yield unit
        if unit.offset is not None:
            self.offsets[name] = unit.offset

    async def run(self, hook: Hook) -> None:
        await hook(None)

    async def reset(self, name: str, hook: Hook) -> None:
        await hook(None)
        self.offsets.pop(name, None)

    async def close(self) -> None:
        pass


class RedisCheckpoints:
    durable = True

    def __init__(
        self,
        url: str,
        prefix: str = "kanin:checkpoint:",
        timeout: float = 5.0,
        tls: Mapping[str, Any] = NO_TLS,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.client = redis_client(url, timeout, "the Redis checkpoint store", tls)

    async def _call(self, what: str, call: Awaitable[Any]) -> Any:
        from redis.exceptions import RedisError

        try:
            return await call
        except (RedisError, OSError, TimeoutError) as exc:
            raise CheckpointUnavailable(f"checkpoint store {what} failed: {exc}") from None

    async def load(self, name: str) -> int | None:
        value = await self._call("read", self.client.get(self.prefix + name))
        return None if value is None else int(value)

    @contextlib.asynccontextmanager
    async def unit(self, name: str) -> AsyncIterator[Unit]:
        unit = Unit()
        yield unit
        if unit.offset is not None:
            await self._call("write", self.client.set(self.prefix + name, unit.offset))

    async def run(self, hook: Hook) -> None:
        await hook(None)

    async def reset(self, name: str, hook: Hook) -> None:
        await hook(None)
        await self._call("delete", self.client.delete(self.prefix + name))

    async def close(self) -> None:
        await self.client.aclose()


class PostgresCheckpoints:
    """Checkpoints in the table ``kanin_checkpoints`` (created when missing), in the
    database (and ``search_path``) of the URL: the read model's own."""

    durable = True

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:  # pragma: no cover - depends on the install
            raise ConfigError(
                "the PostgreSQL checkpoint store needs 'pip install kanin[postgres]'"
            ) from None
        self.url = url
        self._psycopg = psycopg
        self._conn: Any = None

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = await self._psycopg.AsyncConnection.connect(self.url, autocommit=True)
                await self._conn.execute(_CREATE)
            except self._psycopg.Error as exc:
                raise CheckpointUnavailable(f"checkpoint store: {_first_line(exc)}") from None
        return self._conn

    @contextlib.contextmanager
    def _errors(self, what: str) -> Any:
        try:
            yield
        except self._psycopg.OperationalError as exc:
            raise CheckpointUnavailable(f"checkpoint store {what}: {_first_line(exc)}") from None

    async def load(self, name: str) -> int | None:
        conn = await self._connection()
        with self._errors("read"):
            cursor = await conn.execute(
                f"select stream_offset from {TABLE} where name = %s", [name]
            )
            row = await cursor.fetchone()
        return None if row is None else int(row[0])

    @contextlib.asynccontextmanager
    async def unit(self, name: str) -> AsyncIterator[Unit]:
        conn = await self._connection()
        with self._errors("transaction"):
            async with conn.transaction():
                unit = Unit(conn)
                yield unit
                if unit.offset is not None:
                    await conn.execute(_SAVE, [name, unit.offset])

    async def run(self, hook: Hook) -> None:
        conn = await self._connection()
        with self._errors("transaction"):
            async with conn.transaction():
                await hook(conn)

    async def reset(self, name: str, hook: Hook) -> None:
        conn = await self._connection()
        with self._errors("reset"):
            async with conn.transaction():
                await hook(conn)
                await conn.execute(f"delete from {TABLE} where name = %s", [name])

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

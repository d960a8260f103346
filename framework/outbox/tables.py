"""The outbox and inbox tables: created or brought up to date, counted, and connected to.

The SQL is plain and shipped with the package (``schema.sql``); every statement in it is
safe to run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

from framework.errors import ConfigError, KaninError

CHANNEL = "kanin_outbox"  # the LISTEN/NOTIFY channel a commit with new rows wakes


class OutboxUnavailable(KaninError):
    """The outbox database cannot be reached, or its tables are missing."""


def psycopg() -> Any:
    try:
        import psycopg as module
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("the outbox needs 'pip install kanin[postgres]' (psycopg 3)") from None
    return module


def schema() -> str:
    return resources.files("framework.outbox").joinpath("schema.sql").read_text("utf-8")


async def connect(url: str, *, autocommit: bool = True) -> Any:
    """A connection to the outbox database; ``OutboxUnavailable`` naming the host otherwise."""
    pg = psycopg()
    try:
        return await pg.AsyncConnection.connect(url, autocommit=autocommit)
    except pg.Error as exc:
        raise OutboxUnavailable(f"outbox database: {first_line(exc)}") from None


async def init(url: str) -> None:
    """Create the tables and indexes, or add what an older kanin did not make."""
    conn = await connect(url)
    try:
        await conn.execute(schema())
    finally:
        await conn.close()


async def check(conn: Any) -> None:
    """``OutboxUnavailable`` if the outbox table is missing."""
    cursor = await conn.execute("select to_regclass('kanin_outbox') is not null")
    row = await cursor.fetchone()
    if not row or not row[0]:
        raise OutboxUnavailable("no kanin_outbox table in that database: run 'kanin outbox init'")


@dataclass(frozen=True)
class Status:
    pending: int
    oldest: datetime | None  # when the oldest pending row was written
    sent: int  # sent rows still kept (the retention deletes them)
    failing: int  # pending rows whose last try failed
    last_error: str | None  # of the oldest of those
    last_sent: datetime | None


STATUS = """
select
    count(*) filter (where sent_at is null),
    min(created_at) filter (where sent_at is null),
    count(*) filter (where sent_at is not null),
    count(*) filter (where sent_at is null and error is not null),
    (array_agg(error order by id) filter (where sent_at is null and error is not null))[1],
    max(sent_at)
from kanin_outbox"""


async def status(conn: Any) -> Status:
    cursor = await conn.execute(STATUS)
    pending, oldest, sent, failing, error, last = await cursor.fetchone()
    return Status(pending, oldest, sent, failing, error, last)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]

"""The relay: sends the outbox's committed rows to the broker, with confirms.

Each round, in one transaction: lock up to ``batch`` pending rows (``FOR UPDATE SKIP
LOCKED``, so several relays share the table and each row is taken by one), publish them
with confirms, mark the confirmed ones sent, commit. Rows with an ordering key go out in
the order they were written: a row waits while an earlier row of its key is still
pending elsewhere, and the rows of one key are sent one after the other. A relay that
dies between the publish and the commit leaves its rows pending: they are sent again,
with the same ``message_id``, and the consumers' idempotency drops the copy.

A round starts when a commit with new rows notifies ``kanin_outbox`` (``LISTEN``), or
every ``poll`` seconds at the latest. While the broker is down rows wait; a row the
broker refuses (unroutable) keeps its place, its error recorded, and is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from framework.errors import BrokerUnavailable, KaninError
from framework.outbox.outbox import decode
from framework.outbox.tables import (
    CHANNEL,
    OutboxUnavailable,
    Status,
    check,
    connect,
    first_line,
    psycopg,
    status,
)
from framework.publisher import Publisher

log = logging.getLogger("kanin.outbox")

CLAIM = """
with mine as (
    select id from kanin_outbox where sent_at is null
    order by attempts, id limit %(batch)s
    for update skip locked
)
select o.id, o.exchange, o.routing_key, o.body, o.properties, o.ordering_key
from kanin_outbox o join mine on mine.id = o.id
where o.ordering_key is null or not exists (
    select 1 from kanin_outbox p
    where p.ordering_key = o.ordering_key and p.id < o.id and p.sent_at is null
      and p.id not in (select id from mine))
order by o.id"""
SENT = "update kanin_outbox set sent_at = now(), error = null where id = any(%s)"
FAILED = "update kanin_outbox set attempts = attempts + 1, error = %s where id = %s"
EXPIRE = "delete from kanin_outbox where sent_at < now() - make_interval(secs => %s)"


@dataclass(frozen=True)
class Row:
    id: int
    exchange: str
    routing_key: str
    body: bytes
    properties: dict[str, Any]
    key: str | None


class Relay:
    """Sends ``url``'s outbox through ``publisher`` until ``stop()``."""

    def __init__(
        self,
        url: str,
        publisher: Publisher,
        *,
        batch: int = 500,
        poll: float = 1.0,
        retention: float = 3600.0,
        stuck_after: float = 60.0,
    ) -> None:
        self.url = url
        self.publisher = publisher
        self.batch = batch
        self.poll = poll
        self.retention = retention
        self.stuck_after = stuck_after
        self.sent = 0
        self.failed_tries = 0
        self.status: Status | None = None
        self.error: str | None = None  # why the last round failed, if it did
        self.error_since: float | None = None
        self._conn: Any = None
        self._listener: Any = None
        self._listening: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._counted = 0.0
        self._expired = 0.0
        self._reported: set[int] = set()  # rows whose failure was logged

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Send rounds until stopped; a database or broker failure is waited out."""
        delay = 0.2
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                try:
                    sent = await self.round()
                    self.error = self.error_since = None
                    delay = 0.2
                except (OutboxUnavailable, KaninError) as exc:
                    self._failed(str(exc))
                    await self._pause(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                if sent < self.batch:  # more may be there when a batch was full
                    await self._pause(self.poll)
        finally:
            await self._close()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    def _failed(self, error: str) -> None:
        if self.error is None:
            log.warning("outbox relay: %s; trying again", error)
            self.error_since = time.monotonic()
        self.error = error

    async def round(self) -> int:
        """One round: the rows sent."""
        conn = await self._connection()
        pg = psycopg()
        try:
            async with conn.transaction():
                cursor = await conn.execute(CLAIM, {"batch": self.batch})
                rows = [Row(*record) for record in await cursor.fetchall()]
                sent, failed, outage = await self.send(rows)
                if sent:
                    await conn.execute(SENT, [sent])
                for row_id, error in failed:
                    await conn.execute(FAILED, [error, row_id])
            await self._housekeeping(conn)
        except pg.Error as exc:
            raise OutboxUnavailable(f"outbox database: {first_line(exc)}") from None
        self.sent += len(sent)
        self.failed_tries += len(failed)
        if outage is not None:  # the rest waits, untouched, for the broker to be back
            raise outage
        return len(sent)

    async def send(
        self, rows: Sequence[Row]
    ) -> tuple[list[int], list[tuple[int, str]], BrokerUnavailable | None]:
        """Publish ``rows``: the ids confirmed, (id, error) of those the broker refused,
        and the connection's loss if it went (the rows it took stay as they were).

        In waves, each one write and its confirms: the first wave holds every row
        without a key and the first row of each key; each next wave the next row of the
        keys whose last row was confirmed. So a key's rows reach the broker in order, and
        a key stops at its first failure (its later rows wait for the next round)."""
        chains: list[list[Row]] = []
        by_key: dict[str, list[Row]] = {}
        for row in rows:
            if row.key is None:
                chains.append([row])
            elif row.key in by_key:
                by_key[row.key].append(row)
            else:
                chains.append(by_key.setdefault(row.key, [row]))
        sent: list[int] = []
        failed: list[tuple[int, str]] = []
        outage: BrokerUnavailable | None = None
        wave = [(chain, 0) for chain in chains]
        while wave and outage is None:
            messages = [
                (row.exchange, row.routing_key, bytes(row.body), decode(row.properties))
                for row in (chain[at] for chain, at in wave)
            ]
            errors = await self.publisher.publish_raw_each(messages)
            following = []
            for (chain, at), error in zip(wave, errors, strict=True):
                if isinstance(error, BrokerUnavailable):
                    outage = error
                    continue
                if error is not None:
                    failed.append((chain[at].id, str(error)))
                    continue
                sent.append(chain[at].id)
                if at + 1 < len(chain):
                    following.append((chain, at + 1))
            wave = following
        for row_id, reason in failed:  # once per row: it is tried again every round
            if row_id not in self._reported:
                log.error("outbox row %d not sent: %s (kept, tried again)", row_id, reason)
        if len(self._reported) > 10_000:
            self._reported.clear()
        self._reported.update(row_id for row_id, _ in failed)
        return sent, failed, outage

    async def _housekeeping(self, conn: Any) -> None:
        """At most once a second, the counts; once a minute, the retention."""
        now = time.monotonic()
        if now - self._counted >= 1.0:
            self.status = await status(conn)
            self._counted = now
        if now - self._expired >= 60.0:
            await conn.execute(EXPIRE, [self.retention])
            self._expired = now

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            await self._close()
            self._conn = await connect(self.url)
            await check(self._conn)
            self._listener = await connect(self.url)
            await self._listener.execute(f"listen {CHANNEL}")
            self._listening = asyncio.create_task(self._listen(self._listener))
        return self._conn

    async def _listen(self, listener: Any) -> None:
        try:
            async for _ in listener.notifies():
                self._wake.set()
        except Exception as exc:  # the connection went: the next round reconnects
            log.debug("outbox listener ended: %s", exc)

    async def _close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            await asyncio.gather(self._listening, return_exceptions=True)
            self._listening = None
        for conn in (self._listener, self._conn):
            if conn is not None and not conn.closed:
                await conn.close()
        self._conn = self._listener = None

    def unready(self) -> list[str]:
        """Why the relay is stuck: its database unreachable, or rows waiting too long."""
        problems = []
        now = time.monotonic()
        failing = None if self.error_since is None else now - self.error_since
        if self.error is not None and failing is not None and failing >= self.stuck_after:
            problems.append(f"outbox relay failing for {failing:.0f}s: {self.error}")
        waiting = self.oldest_age()
        if waiting is not None and waiting >= self.stuck_after and self.status is not None:
            why = f" (last error: {self.status.last_error})" if self.status.last_error else ""
            count = self.status.pending
            problems.append(
                f"outbox relay stuck: {count} row{'' if count == 1 else 's'} pending, the "
                f"oldest for {waiting:.0f}s{why}"
            )
        return problems

    def oldest_age(self) -> float | None:
        if self.status is None or self.status.oldest is None:
            return None
        return (datetime.now(UTC) - self.status.oldest).total_seconds()

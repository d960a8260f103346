"""A projection for the process tests; configured by environment variables.

Counts how often it applied each event of $KT_STREAM: with the PostgreSQL checkpoint
store in table ``tally`` (same transaction as the checkpoint), else in the Redis hash
$KT_REDIS_KEY. Each event first sleeps $KT_DELAY seconds (so a test can kill it midway).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from framework import Event
from framework.eventlog import Projection, ProjectionContext

TABLE = """
create table if not exists tally (
    stream_offset bigint primary key, n integer not null, seen integer not null
)"""


class Tick(Event, type="tick", version=1):
    n: int


class Tally(Projection):
    queue = os.environ.get("KT_STREAM", "kt-tally")
    name = os.environ.get("KT_NAME", "tally")
    batch = 25

    async def prepare(self, db: Any) -> None:
        if db is not None:
            await db.execute(TABLE)

    async def on_startup(self) -> None:
        self.delay = float(os.environ.get("KT_DELAY", "0"))
        self.redis: Any = None
        if os.environ.get("KT_REDIS_KEY"):
            from redis.asyncio import Redis

            self.redis = Redis.from_url(os.environ["KT_REDIS_URL"])

    async def on_shutdown(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    async def handle(self, event: Tick, ctx: ProjectionContext) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.redis is not None:
            await self.redis.hincrby(os.environ["KT_REDIS_KEY"], str(ctx.offset), 1)
            return
        await ctx.db.execute(
            "insert into tally values (%s, %s, 1) "
            "on conflict (stream_offset) do update set seen = tally.seen + 1",
            [ctx.offset, event.n],
        )

"""A consumer in the inbox, for the process tests; configured by environment variables.

Handles $KT_QUEUE's jobs in its transaction: a row in table ``effects`` and a ``done``
event to $KT_OUT through the outbox, then sleeps $KT_DELAY seconds (still inside), so a
test can kill it anywhere in there.
"""

from __future__ import annotations

import asyncio
import os

from framework import Consumer, Context, Event, RetryPolicy
from tests.integration.apps.slow import Job


class Done(Event, type="test.done", version=1):
    n: int


class Record(Consumer):
    queue = os.environ.get("KT_QUEUE", "kanin.test.inbox")
    idempotency = "postgres"
    prefetch = 20
    concurrency = 8
    retry = RetryPolicy(attempts=5, initial=0.2)

    async def handle(self, event: Job, ctx: Context) -> None:
        async with ctx.transaction() as db:
            await db.execute("insert into effects (n) values (%s)", [event.n])
            await ctx.publish(Done(n=event.n), exchange="", routing_key=os.environ["KT_OUT"])
            await asyncio.sleep(float(os.environ.get("KT_DELAY", "0")))

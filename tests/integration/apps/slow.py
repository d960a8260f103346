"""A consumer for the CLI and process tests; configured by environment variables."""

from __future__ import annotations

import asyncio
import os

from framework import Consumer, Context, Event


class Job(Event, type="test.job", version=1):
    n: int


class SlowJob(Consumer):
    queue = os.environ.get("KANIN_TEST_QUEUE", "kanin.test.slow")
    prefetch = 10

    async def handle(self, event: Job, ctx: Context) -> None:
        await asyncio.sleep(float(os.environ.get("KANIN_TEST_DELAY", "0.1")))
        with open(os.environ["KANIN_TEST_LOG"], "a", encoding="utf-8") as log:  # noqa: ASYNC230
            log.write(f"{os.getpid()} {event.n}\n")
        ctx.logger.debug("job %d done", event.n)

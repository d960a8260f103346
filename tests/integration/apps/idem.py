"""A deduplicating consumer for the process tests; configured by environment variables.

Appends "<pid> <n>" to $KANIN_TEST_LOG when it has handled event n; for
n == $KANIN_TEST_SLOW_N it first appends "start <n>" and then hangs (to be killed).
"""

from __future__ import annotations

import asyncio
import os

from framework import Consumer, Context, RetryPolicy
from tests.integration.apps.slow import Job


def record(line: str) -> None:
    with open(os.environ["KANIN_TEST_LOG"], "a", encoding="utf-8") as log:
        log.write(line + "\n")


class Recorder(Consumer):
    queue = os.environ.get("KANIN_TEST_QUEUE", "kanin.test.idem")
    prefetch = 20
    retry = RetryPolicy(attempts=3, initial=0.2)

    async def handle(self, event: Job, ctx: Context) -> None:
        if str(event.n) == os.environ.get("KANIN_TEST_SLOW_N"):
            record(f"start {event.n}")
            await asyncio.sleep(600)
        await asyncio.sleep(0.001)
        record(f"{os.getpid()} {event.n}")

"""Watching the event loop: a handler that blocks it is named, measured and reported.

A handler that calls blocking code (``time.sleep``, a synchronous HTTP or database
client, minutes of CPU) holds the whole worker: no other message moves, no ack goes
out, and no ``timeout`` can fire, because timeouts run on the loop too. A heartbeat task
notes each turn of the loop; a thread looks at it. When the loop has not turned for
``threshold`` seconds, the thread reads the loop thread's stack, finds the consumer
whose code holds it and logs a WARNING naming the consumer and the line; when the loop
turns again, the heartbeat logs how long it was held.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from types import FrameType

from framework.consumer import Consumer

log = logging.getLogger("kanin.worker")
INTERVAL = 0.1  # seconds between two heartbeats


def holder(frame: FrameType | None) -> str:
    """Who runs in ``frame``'s stack: the innermost consumer method, else the innermost
    function, with the line it is at."""
    innermost = frame
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, Consumer):
            name = f"{owner.consumer_name()}.{frame.f_code.co_name}"
            return f"{name} ({frame.f_code.co_filename}:{frame.f_lineno})"
        frame = frame.f_back
    if innermost is None:
        return "unknown code"
    code = innermost.f_code
    return f"{code.co_name} ({code.co_filename}:{innermost.f_lineno})"


class LoopWatch:
    """Measures the lag of the running event loop and names what blocks it."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.lag = 0.0  # how late the last heartbeat was, seconds
        self.holder: str | None = None  # who holds the loop, while it is held too long
        self._beat = time.monotonic()
        self._loop_thread = 0
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def blocked_for(self) -> float:
        """Seconds since the loop last turned, beyond the heartbeat's own pause."""
        return max(0.0, time.monotonic() - self._beat - INTERVAL)

    def current(self) -> float:
        """The lag now: the last measured one, or the one still running if larger."""
        return max(self.lag, self.blocked_for())

    def start(self) -> None:
        self._loop_thread = threading.get_ident()
        self._beat = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())
        self._thread = threading.Thread(target=self._watch, name="kanin-loop-watch", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _heartbeat(self) -> None:
        while True:
            due = time.monotonic() + INTERVAL
            await asyncio.sleep(INTERVAL)
            now = time.monotonic()
            self.lag = max(0.0, now - due)
            self._beat = now
            held, self.holder = self.holder, None
            if held is not None and self.lag >= self.threshold:
                log.warning("the event loop was blocked for %.1fs by %s", self.lag, held)

    def _watch(self) -> None:
        while not self._stop.wait(INTERVAL):
            blocked = self.blocked_for()
            if blocked < self.threshold or self.holder is not None:
                continue
            self.holder = holder(sys._current_frames().get(self._loop_thread))
            log.warning(
                "the event loop is blocked (%.1fs so far) by %s: no other message moves and "
                "no timeout fires meanwhile; run blocking code with "
                "'await asyncio.to_thread(function, ...)'",
                blocked, self.holder,
            )  # fmt: skip

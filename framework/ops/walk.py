"""One pass over a queue, in order: what a selection picks is handed on, then removed;
everything else stays where it was.

The pass reads every message the queue held when it began, and no more (a replayed
message that fails again lands behind them and waits for the next pass); a ``limit``
bounds what is picked, not what is read. A picked message leaves the queue only after
``act`` returned (its copy confirmed by the broker, its line written), so a crash in
between leaves it in the queue: a copy may exist twice, none is lost. What the selection
does not pick is never acknowledged: it goes back when the reader closes, in order (see
``QueueReader``). Memory stays bounded whatever the queue's size: at most ``WINDOW``
picked messages are in hand at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from framework.errors import KaninError
from framework.headers import integer
from framework.ops.parked import Parked
from framework.transport.base import QueueReader, Transport

WINDOW = 256  # picked messages being acted on at once
RETURNS_WARNING = 10  # give-backs of one message that earn a warning
log = logging.getLogger("kanin.dlq")


@dataclass
class Tally:
    """How far a pass got."""

    queue: str
    total: int  # messages ready when the pass began
    seen: int = 0
    picked: int = 0
    done: int = 0  # picked, acted on, and removed (or shown)
    skipped: int = 0  # not picked: left in place
    returns: int = 0  # the most times the broker says a message read was given back


Select = Callable[[Parked], bool]
Act = Callable[[Parked], Awaitable[None]]
Progress = Callable[[Tally], None]


class Interrupted(KaninError):
    """A pass stopped by an error: what was done is done, the rest is still in the queue."""

    def __init__(self, tally: Tally, cause: BaseException) -> None:
        self.tally = tally
        self.cause = cause
        super().__init__(
            f"{cause} (stopped after {tally.done} of {tally.picked} picked; "
            f"everything else is still in {tally.queue})"
        )
        self.exit_code = cause.exit_code if isinstance(cause, KaninError) else 1


async def walk(
    transport: Transport,
    queue: str,
    select: Select,
    act: Act | None = None,
    *,
    remove: bool = False,
    limit: int | None = None,
    rate: float | None = None,
    progress: Progress | None = None,
) -> Tally:
    """Read ``queue`` once; hand each message ``select`` picks (``limit`` at most) to
    ``act``, then remove it if ``remove``. ``rate``: picked messages per second at most."""
    reader = await transport.reader(queue)
    tally = Tally(queue, reader.depth)
    pending: deque[asyncio.Task[None]] = deque()
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        while tally.seen < tally.total:
            delivery = await reader.get()
            if delivery is None:
                break
            tally.seen += 1
            parked = Parked(delivery)
            tally.returns = max(
                tally.returns, integer(delivery.headers.get("x-delivery-count")) or 0
            )
            if (limit is not None and tally.picked >= limit) or not select(parked):
                tally.skipped += 1
            else:
                tally.picked += 1
                if rate:
                    await asyncio.sleep(max(0.0, began + tally.picked / rate - loop.time()))
                pending.append(loop.create_task(_handle(reader, parked, act, remove, tally)))
                while pending and (len(pending) >= WINDOW or pending[0].done()):
                    await pending.popleft()
            if progress is not None:
                progress(tally)
        while pending:
            await pending.popleft()
    except BaseException as exc:
        if pending:  # those under way finish: each is either done or still in the queue
            await asyncio.gather(*pending, return_exceptions=True)
        if isinstance(exc, Exception):
            raise Interrupted(tally, exc) from None
        raise
    finally:
        await reader.close()
        if progress is not None:
            progress(tally)
        if tally.returns >= RETURNS_WARNING:
            log.warning(
                "warning: messages of %s have been given back to it up to %d times "
                "(x-delivery-count); a quorum queue with a delivery limit (RabbitMQ 4 sets "
                "20 unless told otherwise) drops a message given back more often: move them "
                "out (replay, export --remove) rather than reading them again and again",
                queue,
                tally.returns,
            )
    return tally


async def _handle(
    reader: QueueReader, parked: Parked, act: Act | None, remove: bool, tally: Tally
) -> None:
    if act is not None:
        await act(parked)
    if remove:
        await reader.remove(parked.delivery.delivery_tag)
    tally.done += 1

"""kanin's fast paths through aiormq's channel internals, and nothing else of aiormq's private.

Two measured wins (``docs/benchmarks.md``), each with aiormq's public API as its fallback:

- **delivery dispatch**: aiormq wraps each delivery's task in a wrapper object, adds it
  to two future stores and attaches three callbacks. :func:`dispatch_deliveries` starts
  the task itself from the same frames, read the same way, with one callback; tasks still
  running when the channel closes are cancelled, as aiormq cancels its own.
- **batch publish**: :func:`publish_batch` writes a whole batch in one frame buffer and
  one queue put, instead of a task, a lock round and a write per message.

Both run only where :func:`usable` says so: ``KANIN_FAST_PATHS`` on, an aiormq version
the suite has run them against (``framework/versions.py``), and the names present.
``tests/integration/test_fast_paths.py`` checks each against the public path.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from aiormq.abc import AbstractChannel, ChannelFrame, DeliveredMessage
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from framework.transport.base import OutgoingMessage
from framework.versions import fast_path

# What each path takes from an aiormq channel.
DISPATCH_NAMES = ("_on_deliver_frame", "_get_frame", "_read_content", "consumers")
BATCH_NAMES = (
    "lock", "delivery_tag", "confirmations", "message_id_delivery_tag", "write_queue",
    "create_future", "number", "_split_body",
)  # fmt: skip

Consume = Callable[[DeliveredMessage], Any]


def usable(channel: AbstractChannel, names: Sequence[str], allowed: bool) -> bool:
    """Whether a fast path needing ``names`` may run on ``channel``."""
    return fast_path("aiormq", allowed) and all(hasattr(channel, n) for n in names)


def dispatch_deliveries(
    channel: AbstractChannel, running: set[asyncio.Task[None]], closing: asyncio.Future[Any]
) -> None:
    """Start each delivery's task here rather than through aiormq's task store: the
    same frames read the same way, the same consumer called, one callback per task (the
    channel reader looks the method up per delivery from aiormq 7.2.1 on). ``running``
    holds the tasks in flight; they are cancelled when ``closing`` is done."""
    ch: Any = channel
    loop = asyncio.get_running_loop()

    async def on_deliver_frame(frame: Basic.Deliver) -> None:
        header = await ch._get_frame()
        if not isinstance(header, ContentHeader):
            raise ValueError(f"unexpected frame {header!r} instead of a content header")
        message = await ch._read_content(frame, header)
        consumer = ch.consumers.get(frame.consumer_tag)
        if consumer is None:  # cancelled meanwhile: unacked, it is requeued at close
            return
        task = loop.create_task(consumer(message))
        running.add(task)
        task.add_done_callback(running.discard)

    def on_close(_: object) -> None:
        for task in list(running):
            task.cancel()

    ch._on_deliver_frame = on_deliver_frame  # the channel's reader calls it per delivery
    closing.add_done_callback(on_close)


async def publish_batch(channel: AbstractChannel, messages: Sequence[OutgoingMessage]) -> list[Any]:
    """Write ``messages`` (mandatory) in one go; return each one's confirm or its error.

    Sequence numbers, confirm futures and the frames go in under the channel's lock, as
    aiormq's ``basic_publish`` does it. If the write is cancelled (a timeout, a caller
    that gave up) before the frames are queued, the broker has seen none of them: their
    sequence numbers and futures are taken back, so every later confirm on the channel
    still resolves its own publish. Once queued, the frames go out and their confirms
    arrive whether or not anybody waits for them.
    """
    ch: Any = channel
    confirms: list[asyncio.Future[Any]] = []
    async with ch.lock:
        first = ch.delivery_tag + 1
        frames: list[Any] = []
        try:
            for exchange, routing_key, body, properties in messages:
                if not properties.message_id:  # returns are matched by message id
                    properties.message_id = uuid.uuid4().hex
                ch.delivery_tag += 1
                confirm = ch.create_future()
                ch.confirmations[ch.delivery_tag] = confirm
                ch.message_id_delivery_tag[properties.message_id] = ch.delivery_tag
                confirms.append(confirm)
                frames.append(
                    Basic.Publish(exchange=exchange, routing_key=routing_key, mandatory=True)
                )
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                frames.extend(ch._split_body(body))
            await ch.write_queue.put(ChannelFrame.marshall(channel_number=ch.number, frames=frames))
        except BaseException:
            _take_back(ch, first, messages, confirms)
            raise
    for (*_, properties), tag, confirm in zip(
        messages, range(first, first + len(confirms)), confirms, strict=True
    ):
        confirm.add_done_callback(_forget(ch, str(properties.message_id), tag))
    return list(await asyncio.gather(*confirms, return_exceptions=True))


def _take_back(
    ch: Any, first: int, messages: Sequence[OutgoingMessage], confirms: list[asyncio.Future[Any]]
) -> None:
    """Undo the registration of publishes the broker never saw (the lock is held)."""
    ch.delivery_tag = first - 1
    registered = zip(messages[: len(confirms)], confirms, strict=True)
    for tag, ((*_, properties), confirm) in enumerate(registered, start=first):
        ch.confirmations.pop(tag, None)
        if ch.message_id_delivery_tag.get(properties.message_id) == tag:
            del ch.message_id_delivery_tag[properties.message_id]
        confirm.cancel()


def _forget(ch: Any, message_id: str, tag: int) -> Callable[[asyncio.Future[Any]], None]:
    def forget(_: asyncio.Future[Any]) -> None:
        if ch.message_id_delivery_tag.get(message_id) == tag:
            del ch.message_id_delivery_tag[message_id]

    return forget

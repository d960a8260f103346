"""Streams in the topology on the real RabbitMQ: declared, planned, exported, logged to."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import AMQP_URL, BrokerAdmin
from tests.integration.test_operations import KANIN, kanin, until
from tests.integration.worker_kit import amqp, count

pytestmark = pytest.mark.integration


async def test_a_stream_is_applied_planned_exported_and_keeps_what_it_logged(
    prefix: str, admin: BrokerAdmin, write: Callable[..., Path], tmp_path: Path
) -> None:
    file = write(
        f"""
exchanges:
  - name: {prefix}.events
    type: topic
queues:
  - name: {prefix}.events.log
    type: stream
    max_age: 30d
    max_length_bytes: 1GB
    segment_bytes: 50MB
bindings:
  - exchange: {prefix}.events
    queue: {prefix}.events.log
    routing_key: "#"
"""
    )
    applied = kanin("topology", "apply", str(file))
    assert applied.returncode == 0, applied.stderr
    assert f"created  queue {prefix}.events.log (stream)" in applied.stdout
    await until(lambda: f"{prefix}.events.log" in admin.queues(prefix), what="the stream listed")
    live = admin.queues(prefix)[f"{prefix}.events.log"]
    assert live["type"] == "stream"
    assert live["arguments"] == {
        "x-queue-type": "stream",
        "x-max-age": "30D",
        "x-max-length-bytes": 1_000_000_000,
        "x-stream-max-segment-size-bytes": 50_000_000,
    }
    planned = kanin("topology", "plan", str(file))
    assert planned.stdout.splitlines()[-1].endswith("0 to create, 3 unchanged, 0 differ, 0 stale")

    out = tmp_path / "exported.yaml"
    exported = kanin("topology", "export", "--prefix", prefix, "--out", str(out))
    assert exported.returncode == 0 and exported.stderr == "", exported.stderr
    again = kanin("topology", "plan", str(out))
    assert again.stdout.splitlines()[-1].endswith("0 to create, 3 unchanged, 0 differ, 0 stale")

    async with amqp() as channel:  # the log keeps what it was sent, read or not
        events = await channel.get_exchange(f"{prefix}.events")
        for n in range(3):
            await events.publish(aio_pika.Message(b'{"n": %d}' % n), routing_key="order.placed")
    await until(
        lambda: admin.queues(prefix)[f"{prefix}.events.log"].get("messages") == 3,
        what="three entries in the log",
    )


def test_kanin_run_refuses_a_consumer_class_on_a_stream(write: Callable[..., Path]) -> None:
    file = write("queues:\n  - name: kanin.test.slow\n    type: stream\n")
    result = kanin("run", "tests.integration.apps.slow", "--topology", str(file))
    assert result.returncode == 2
    assert "a stream: a consumer class reads a queue" in result.stderr
    assert "Traceback" not in result.stderr


SENT = datetime(2026, 11, 30, 12, 0, 1, tzinfo=UTC)


def start_tail(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [KANIN, "events", "tail", *args, "--json"],
        env={**os.environ, "KANIN_BROKER_URL": AMQP_URL}, text=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


async def test_events_tail_shows_what_passes_and_takes_nothing_from_anybody(
    prefix: str, admin: BrokerAdmin
) -> None:
    async with amqp() as channel:
        events = await channel.declare_exchange(f"{prefix}.events", aio_pika.ExchangeType.TOPIC)
        work = await channel.declare_queue(f"{prefix}.work")
        await work.bind(events, "#")
        log = await channel.declare_queue(
            f"{prefix}.log", durable=True, arguments={"x-queue-type": "stream"}
        )
        await log.bind(events, "#")
        watcher = start_tail(events.name, "--key", "order.*", "--count", "2")
        try:
            await until(
                lambda: any(b[3] == "order.*" for b in admin.bindings(prefix)),
                what="the watching queue bound",
            )
            for key in ("order.placed", "payment.captured", "order.shipped"):
                message = aio_pika.Message(
                    b'{"key": "%s"}' % key.encode(), type=key, message_id=f"id-{key}",
                    headers={"x-event-version": 1}, timestamp=SENT,
                )  # fmt: skip
                await events.publish(message, routing_key=key)
            out, err = await asyncio.to_thread(watcher.communicate, timeout=30)
        finally:
            if watcher.poll() is None:
                watcher.kill()
        assert watcher.returncode == 0, err
        seen = [json.loads(line) for line in out.splitlines()]
        assert [(e["routing_key"], e["type"], e["version"], e["message_id"]) for e in seen] == [
            ("order.placed", "order.placed", 1, "id-order.placed"),
            ("order.shipped", "order.shipped", 1, "id-order.shipped"),
        ]
        assert seen[0]["body"] == {"key": "order.placed"}
        assert seen[0]["time"] == "2026-11-30T12:00:01+00:00"
        assert await count(channel, work.name) == 3  # the work queue lost nothing

        reader = start_tail("--stream", log.name, "--from", "first", "--count", "3")
        out, err = await asyncio.to_thread(reader.communicate, timeout=30)
        assert reader.returncode == 0, err
        read = [json.loads(line) for line in out.splitlines()]
        assert [(e["offset"], e["routing_key"]) for e in read] == [
            (0, "order.placed"), (1, "payment.captured"), (2, "order.shipped")
        ]  # fmt: skip
    await until(
        lambda: admin.queues(prefix)[f"{prefix}.log"].get("messages") == 3,
        what="the log still holding all three",
    )


def test_events_tail_needs_an_exchange_or_a_stream() -> None:
    both = kanin("events", "tail", "x", "--stream", "y")
    assert (both.returncode, both.stderr) == (
        2, "error: name an EXCHANGE to watch, or a --stream to read (not both)\n"
    )  # fmt: skip
    bad = kanin("events", "tail", "--stream", "y", "--from", "yesterday")
    assert bad.returncode == 2 and "--from 'yesterday'" in bad.stderr

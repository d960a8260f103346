"""Streams in the topology on the real RabbitMQ: declared, planned, exported, logged to."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import BrokerAdmin
from tests.integration.test_operations import kanin, until
from tests.integration.worker_kit import amqp

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

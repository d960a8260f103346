"""Projections on real RabbitMQ streams, with checkpoints in PostgreSQL and Redis:
killed and restarted, replayed, stopped or parked on a failing event."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from framework import Publisher
from tests.conftest import AMQP_URL, schema_url
from tests.integration.apps.tally import Tick
from tests.integration.test_idempotency import REDIS
from tests.integration.test_operations import KANIN, ROOT, kanin
from tests.integration.worker_kit import settings

pytestmark = pytest.mark.integration
EVENTS = 1000


def stream_topology(write: Callable[..., Path], stream: str) -> Path:
    return write(f"queues:\n  - name: {stream}\n    type: stream\n")


async def publish_ticks(stream: str, numbers: range) -> None:
    async with Publisher(settings()) as publisher:
        await publisher.publish_many((Tick(n=n) for n in numbers), exchange="", routing_key=stream)


def start_tally(topology: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [KANIN, "run", "tests.integration.apps.tally", "--topology", str(topology)],
        env={**os.environ, "KANIN_BROKER_URL": AMQP_URL, **env},
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip


def query(schema: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(schema_url(schema), autocommit=True) as conn:
        try:
            return conn.execute(sql).fetchall()
        except psycopg.errors.UndefinedTable:
            return []


def table_exists(schema: str, table: str) -> bool:
    return query(schema, f"select to_regclass('{table}')")[0][0] is not None


def checkpoint(schema: str, name: str) -> int | None:
    rows = query(schema, f"select stream_offset from kanin_checkpoints where name = '{name}'")
    return rows[0][0] if rows else None


async def wait_for(check: Callable[[], bool], within: float, process: Any, what: str) -> None:
    for _ in range(int(within / 0.05)):
        if await asyncio.to_thread(check):
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"worker ended early: {process.stdout.read()}")
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within}s: {what}")


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    return out


async def test_a_projection_killed_and_restarted_applies_each_event_once(
    prefix: str, pg_schema: str, write: Callable[..., Path]
) -> None:
    stream = f"{prefix}.log"
    topology = stream_topology(write, stream)
    url = schema_url(pg_schema)
    env = {"KT_STREAM": stream, "KT_NAME": "tally", "KANIN_CHECKPOINT_URL": url}
    first = start_tally(topology, **env, KT_DELAY="0.003")
    try:
        await wait_for(lambda: table_exists(pg_schema, "tally"), 30, first, "the table")
        await publish_ticks(stream, range(EVENTS))
        kill_at = random.randrange(100, 800)
        await wait_for(
            lambda: (checkpoint(pg_schema, "tally") or 0) >= kill_at, 60, first, "progress"
        )
        first.send_signal(signal.SIGKILL)  # mid-batch, most likely
        first.communicate(timeout=30)
        at_kill = checkpoint(pg_schema, "tally")
        assert at_kill is not None and at_kill < EVENTS - 1
    finally:
        if first.poll() is None:
            first.kill()
    second = start_tally(topology, **env)
    try:
        await wait_for(lambda: checkpoint(pg_schema, "tally") == EVENTS - 1, 60, second, "end")
    finally:
        out = stop(second)
    assert f"projection tally reading {stream} from {at_kill + 1}" in out, out
    # what one uninterrupted run makes: every event applied once, in order, none skipped
    rows = query(pg_schema, "select stream_offset, n, seen from tally order by stream_offset")
    assert rows == [(n, n, 1) for n in range(EVENTS)]


async def test_with_the_redis_checkpoint_a_restart_applies_again_at_most_one_batch(
    prefix: str, write: Callable[..., Path]
) -> None:
    from redis import Redis

    stream = f"{prefix}.log"
    topology = stream_topology(write, stream)
    key = f"{prefix}:tally"
    name = f"{prefix}.tally"
    env = {
        "KT_STREAM": stream, "KT_NAME": name, "KANIN_CHECKPOINT_URL": REDIS,
        "KT_REDIS_URL": REDIS, "KT_REDIS_KEY": key,
    }  # fmt: skip
    redis = Redis.from_url(REDIS, decode_responses=True)

    def saved() -> int:
        value = redis.get(f"kanin:checkpoint:{name}")
        return -1 if value is None else int(value)

    try:
        assert kanin("topology", "apply", str(topology)).returncode == 0
        await publish_ticks(stream, range(EVENTS))
        first = start_tally(topology, **env, KT_DELAY="0.003")
        try:
            await wait_for(lambda: saved() >= random.randrange(100, 800), 60, first, "progress")
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=30)
        finally:
            if first.poll() is None:
                first.kill()
        at_kill = saved()
        second = start_tally(topology, **env)
        try:
            await wait_for(lambda: saved() == EVENTS - 1, 60, second, "the end")
        finally:
            stop(second)
        seen = {int(k): int(v) for k, v in redis.hgetall(key).items()}
        assert sorted(seen) == list(range(EVENTS))  # none skipped
        twice = sorted(k for k, v in seen.items() if v > 1)
        assert all(v <= 2 for v in seen.values())
        # applied again: only events after the checkpoint the killed worker had saved,
        # at most one batch of them (Tally.batch = 25)
        assert all(at_kill < k <= at_kill + 25 for k in twice), (at_kill, twice)
    finally:
        redis.delete(key, f"kanin:checkpoint:{name}")
        redis.close()


def test_kanin_run_refuses_a_projection_on_a_queue_and_several_processes(
    prefix: str, write: Callable[..., Path]
) -> None:
    queue = write(f"queues:\n  - name: {prefix}.log\n", name="queue.yaml")
    env = {"KT_STREAM": f"{prefix}.log"}
    run = subprocess.run(
        [KANIN, "run", "tests.integration.apps.tally", "--topology", str(queue)],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == (
        f"error: tests.integration.apps.tally.Tally reads '{prefix}.log', a classic queue: "
        "a projection reads a stream (type: stream); a queue is read by a Consumer"
    )
    streams = stream_topology(write, f"{prefix}.log")
    run = subprocess.run(
        [KANIN, "run", "tests.integration.apps.tally", "--topology", str(streams),
         "--processes", "2"],
        env={**os.environ, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2
    assert "a projection reads its stream in order in one process" in run.stderr

"""Handled once: duplicates, several processes, a killed worker, Redis going away."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework import Consumer, Context, Publisher, RetryPolicy
from framework.idempotency import RedisStore, Status, scoped_key
from framework.topology import QueueSpec, Topology
from tests.conftest import AMQP_URL
from tests.integration.apps.slow import Job
from tests.integration.worker_kit import (
    EMPTY_TOPOLOGY,
    amqp,
    count,
    eventually,
    kill_tree,
    running,
    settings,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).parent / "kanin")
REDIS = os.environ.get("KANIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


async def publish_twice(prefix: str, numbers: range, queue: str) -> None:
    """Each event twice, the copies next to each other, with the same idempotency key."""
    async with Publisher(settings()) as publisher:
        for n in numbers:
            for _ in range(2):
                await publisher.publish(
                    Job(n=n), exchange="", routing_key=queue, idempotency_key=f"{prefix}:{n}"
                )


def topology(queue: str) -> Topology:
    return Topology(queues=[QueueSpec(name=queue, retry=RetryPolicy(attempts=3, initial=0.2))])


@pytest.mark.parametrize("store", ["memory://", REDIS])
async def test_same_event_three_times_is_handled_once(prefix: str, store: str) -> None:
    handled: list[int] = []

    class Once(Consumer):
        queue = f"{prefix}.work"
        idempotency = store
        idempotency_retention = 300
        prefetch = 1  # one copy at a time: the later ones find the key done, not in progress

        async def handle(self, event: Job, ctx: Context) -> None:
            handled.append(event.n)

    async with running(Once, topology=topology(f"{prefix}.work")) as worker:
        async with Publisher(settings()) as publisher:
            for _ in range(3):  # a publisher retrying: same key, fresh message ids
                await publisher.publish(
                    Job(n=1), exchange="", routing_key=f"{prefix}.work", idempotency_key=prefix
                )
        stats = worker.runners[0].stats
        await eventually(lambda: stats.handled + stats.duplicates == 3, what="3 settled")
        await worker.channels[0].drain()  # type: ignore[union-attr]
        assert worker.channels[0].acked == 3  # type: ignore[union-attr]
        async with amqp() as channel:
            assert await count(channel, f"{prefix}.work") == 0
    assert handled == [1]
    assert stats.duplicates == 2


async def test_two_consumers_of_the_same_event_both_handle_it(prefix: str) -> None:
    seen: list[str] = []

    class A(Consumer):
        queue = f"{prefix}.a"

        async def handle(self, event: Job, ctx: Context) -> None:
            seen.append("a")

    class B(Consumer):
        queue = f"{prefix}.b"

        async def handle(self, event: Job, ctx: Context) -> None:
            seen.append("b")

    specs = Topology(queues=[QueueSpec(name=f"{prefix}.a"), QueueSpec(name=f"{prefix}.b")])
    async with running(A, B, topology=specs):
        async with Publisher(settings()) as publisher:
            for queue in ("a", "b"):
                await publisher.publish(
                    Job(n=1), exchange="", routing_key=f"{prefix}.{queue}", idempotency_key="k"
                )
        await eventually(lambda: len(seen) == 2)
    assert sorted(seen) == ["a", "b"]


async def test_failure_releases_the_key_and_the_retry_runs(prefix: str) -> None:
    attempts: list[int] = []

    class Flaky(Consumer):
        queue = f"{prefix}.work"
        retry = RetryPolicy(attempts=3, initial=0.2)

        async def handle(self, event: Job, ctx: Context) -> None:
            attempts.append(ctx.attempt)
            if ctx.attempt == 1:
                raise RuntimeError("first try fails")

    async with running(Flaky, topology=topology(f"{prefix}.work")) as worker:
        async with Publisher(settings()) as publisher:
            await publisher.publish(Job(n=1), exchange="", routing_key=f"{prefix}.work")
        await eventually(lambda: worker.runners[0].stats.handled == 1, what="handled")
    assert attempts == [1, 2]
    assert worker.runners[0].stats.postponed == 0  # the key was free for attempt 2


def handled_lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def start(prefix: str, log: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """`kanin run` of the Recorder; its stderr goes to <log>.stderr (a pipe could fill up)."""
    stderr = open(f"{log}.stderr", "a", encoding="utf-8")  # noqa: SIM115 - closed by the child's exit
    return subprocess.Popen(
        [KANIN, "run", "tests.integration.apps.idem", *args],
        cwd=ROOT,
        env={
            **os.environ,
            "KANIN_BROKER_URL": AMQP_URL,
            "KANIN_TOPOLOGY": EMPTY_TOPOLOGY,
            "KANIN_TEST_QUEUE": f"{prefix}.jobs",
            "KANIN_TEST_LOG": str(log),
            "KANIN_IDEMPOTENCY_URL": REDIS,
            "KANIN_IDEMPOTENCY_RETENTION": "300",  # test keys leave Redis by themselves
            **env,
        },
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


async def queues_empty(prefix: str) -> bool:
    async with amqp() as channel:
        for name in (f"{prefix}.jobs", f"{prefix}.jobs.retry.1", f"{prefix}.jobs.retry.2"):
            if await count(channel, name):
                return False
    return True


async def stop(process: subprocess.Popen[str], log: Path) -> str:
    process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(process.wait, timeout=60)
    stderr = await asyncio.to_thread(Path(f"{log}.stderr").read_text)
    assert process.returncode == 0, stderr[-3000:]
    return stderr


async def test_two_processes_handle_each_event_exactly_once(prefix: str, tmp_path: Path) -> None:
    log = tmp_path / "handled.log"
    process = start(prefix, log, "--processes", "2")
    try:
        await eventually_async(lambda: declared(f"{prefix}.jobs"), 30)
        await publish_twice(prefix, range(1000), f"{prefix}.jobs")
        await eventually(lambda: len(handled_lines(log)) >= 1000, within=120, what="1000 handled")
        await eventually_async(lambda: queues_empty(prefix), 60)
        stderr = await stop(process, log)
    finally:
        kill_tree(process)
    lines = handled_lines(log)
    counts = Counter(int(line.split()[1]) for line in lines)
    assert set(counts) == set(range(1000))
    assert max(counts.values()) == 1, [n for n, c in counts.items() if c > 1][:10]
    assert len({line.split()[0] for line in lines}) == 2  # both processes did work
    duplicates = sum(int(d) for d in re.findall(r"duplicates (\d+)", stderr))
    assert duplicates == 1000


async def declared(queue: str) -> bool:
    """Whether the worker has declared ``queue`` yet (a refused passive declare closes
    the channel, so each check uses a connection of its own)."""
    try:
        async with amqp() as channel:
            await count(channel, queue)
        return True
    except Exception:
        return False


async def eventually_async(check, within: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {within}s")


async def test_killed_worker_mid_handler_event_is_handled_once_after_redelivery(
    prefix: str, tmp_path: Path
) -> None:
    log = tmp_path / "handled.log"
    first = start(prefix, log, KANIN_TEST_SLOW_N="3", KANIN_IDEMPOTENCY_LEASE="2")
    try:
        await eventually_async(lambda: declared(f"{prefix}.jobs"), 30)
        async with Publisher(settings()) as publisher:
            for n in range(1, 6):
                await publisher.publish(
                    Job(n=n),
                    exchange="",
                    routing_key=f"{prefix}.jobs",
                    idempotency_key=f"{prefix}:{n}",
                )
        await eventually(lambda: "start 3" in handled_lines(log), within=30, what="3 started")
        # Kill only once 1, 2, 4 and 5 are recorded as done: a process killed between a
        # handler's effect and `complete` may run that handler again (docs/idempotency.md).
        await eventually_async(lambda: all_done(prefix, [1, 2, 4, 5]), 30)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        kill_tree(first)
    second = start(prefix, log, KANIN_IDEMPOTENCY_LEASE="2")
    try:
        await eventually(
            lambda: any(
                line.endswith(" 3") and not line.startswith("start") for line in handled_lines(log)
            ),
            within=60,
            what="3 handled after the kill",
        )
        await eventually_async(lambda: queues_empty(prefix), 60)
        await stop(second, log)
    finally:
        kill_tree(second)
    done = Counter(
        int(line.split()[1]) for line in handled_lines(log) if not line.startswith("start")
    )
    assert done == Counter({1: 1, 2: 1, 3: 1, 4: 1, 5: 1})


async def all_done(prefix: str, numbers: list[int]) -> bool:
    """Whether the Recorder's Redis keys of these events say done."""
    store = RedisStore(REDIS)
    try:
        name = "tests.integration.apps.idem.Recorder"
        keys = [store.prefix + scoped_key(name, f"{prefix}:{n}") for n in numbers]
        return all(value == "done" for value in await store.client.mget(keys))
    finally:
        await store.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A redis-server of this test's own, so stopping it disturbs nobody."""
    port = free_port()
    servers: list[subprocess.Popen[bytes]] = []
    yield port, servers
    for server in servers:
        server.kill()
        server.wait()


def start_redis(port: int, tmp_path: Path) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.05)
    raise AssertionError("redis-server did not start")


async def test_redis_going_away_postpones_and_nothing_is_lost(
    prefix: str, tmp_path: Path, own_redis: tuple[int, list[subprocess.Popen[bytes]]]
) -> None:
    port, servers = own_redis
    servers.append(start_redis(port, tmp_path))
    handled: list[int] = []

    class Careful(Consumer):
        queue = f"{prefix}.work"
        idempotency = f"redis://127.0.0.1:{port}/0"
        concurrency = 2
        prefetch = 2

        async def handle(self, event: Job, ctx: Context) -> None:
            await asyncio.sleep(0.05)
            handled.append(event.n)

    async with running(Careful, topology=topology(f"{prefix}.work")) as worker:
        stats = worker.runners[0].stats
        async with Publisher(settings()) as publisher:
            await publisher.publish_many(
                (Job(n=n) for n in range(40)), exchange="", routing_key=f"{prefix}.work"
            )
        await eventually(lambda: len(handled) >= 5, what="5 handled")
        servers[0].terminate()
        servers[0].wait()
        await eventually(lambda: stats.postponed >= 5, what="postponed while Redis is down")
        down_at = len(handled)
        await asyncio.sleep(0.5)
        assert len(handled) <= down_at + 2  # at most the two already past their claim
        servers.append(start_redis(port, tmp_path))
        await eventually(lambda: len(set(handled)) == 40, within=60, what="all handled")
        async with amqp() as channel:
            for name in (f"{prefix}.work", f"{prefix}.work.dlq"):
                assert await count(channel, name) == 0
    assert sorted(handled) == list(range(40))  # none lost, none twice
    assert stats.dead_lettered == 0


async def test_redis_store_semantics() -> None:
    store = RedisStore(REDIS, prefix=f"kanin:test:{uuid.uuid4().hex}:")
    try:
        claim = await store.claim("k", lease=0.3)
        assert claim.status is Status.NEW
        assert (await store.claim("k", lease=10)).status is Status.IN_PROGRESS
        await store.release("k", "not-mine")
        assert (await store.claim("k", lease=10)).status is Status.IN_PROGRESS
        await asyncio.sleep(0.35)  # lease expired: the worker died
        again = await store.claim("k", lease=10)
        assert again.status is Status.NEW
        await store.complete("k", again.token, retention=0.3)
        assert (await store.claim("k", lease=10)).status is Status.DONE
        await asyncio.sleep(0.35)
        last = await store.claim("k", lease=10)
        assert last.status is Status.NEW
        await store.release("k", last.token)
    finally:
        await store.close()

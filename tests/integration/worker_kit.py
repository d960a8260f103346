"""Helpers for running a real Worker in the test's event loop against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from framework import Consumer, Settings, Worker
from framework.topology import Topology
from tests.cluster import _wait_port
from tests.conftest import AMQP_URL, BrokerAdmin

# for `kanin run` in a test: a topology file that declares nothing (a missing one is exit 2)
EMPTY_TOPOLOGY = str(Path(__file__).parent / "apps" / "empty_topology.yaml")


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "broker_url": AMQP_URL,
        "topology": "does-not-exist.yaml",
        "shutdown_grace": 5.0,
        "publish_timeout": 10.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@asynccontextmanager
async def running(
    *consumers: type[Consumer], topology: Topology | None = None, **overrides: Any
) -> AsyncIterator[Worker]:
    async with started(Worker(list(consumers), settings(**overrides), topology=topology)) as w:
        yield w


@asynccontextmanager
async def started(worker: Worker) -> AsyncIterator[Worker]:
    """Run ``worker`` in the background from ready until the block ends, then stop it."""
    task = asyncio.create_task(worker.run())
    try:
        while not worker.ready:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


def close_connections(admin: BrokerAdmin, name: str) -> int:
    """Close the connections whose client named them ``name``; how many there were."""
    found = [
        c["name"]
        for c in admin.request("GET", "connections") or []
        if (c.get("client_properties") or {}).get("connection_name") == name
    ]
    for connection in found:
        admin.request("DELETE", f"connections/{quote(connection, safe='')}")
    return len(found)


async def close_connections_soon(admin: BrokerAdmin, name: str) -> int:
    """``close_connections`` once the management API lists them (it takes a few seconds)."""
    closed = 0
    for _ in range(300):
        closed = await asyncio.to_thread(close_connections, admin, name)
        if closed:
            break
        await asyncio.sleep(0.1)
    return closed


async def eventually(check: Callable[[], bool], within: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {within}s: {what or check}")


async def drain(channel: AbstractChannel, queue: str) -> list[AbstractIncomingMessage]:
    """Every message now in ``queue`` (taken off it)."""
    q = await channel.get_queue(queue, ensure=False)
    out = []
    while (message := await q.get(fail=False, no_ack=True)) is not None:
        out.append(message)
    return out


async def wait_for_messages(
    channel: AbstractChannel, queue: str, count: int, within: float = 15.0
) -> list[AbstractIncomingMessage]:
    got: list[AbstractIncomingMessage] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got += await drain(channel, queue)
        await asyncio.sleep(0.05)
    assert len(got) >= count, f"{len(got)} of {count} messages in {queue} after {within}s"
    return got


async def count(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return int(declared.declaration_result.message_count or 0)


@asynccontextmanager
async def amqp() -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        yield await connection.channel()


def kill_tree(process: subprocess.Popen[str]) -> None:
    """SIGKILL a process started with start_new_session=True, with everything it forked."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


async def wait_for(
    check: Callable[[], Any], within: float, process: Any = None, what: str = ""
) -> None:
    """Until ``check()`` (run in a thread: it may block) is true; fails early if
    ``process`` (a ``Popen`` whose stdout is piped) ends first."""
    for _ in range(int(within / 0.05)):
        if await asyncio.to_thread(check):
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"process ended early: {process.stdout.read()}")
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {within}s: {what}")


def stop_process(process: subprocess.Popen[str]) -> str:
    """SIGTERM (if it still runs), then its output."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    return out


@contextlib.contextmanager
def redis_server(port: int, *args: str) -> Iterator[int]:
    """A ``redis-server`` of the test's own with ``args``, answering on ``port`` (its own,
    or its TLS port), keeping nothing on disk; stopped afterwards."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed (make services installs it)")
    process = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_port(port, within=15)
        yield port
    finally:
        process.terminate()
        process.wait(10)

"""`kanin run` and `kanin publish` as processes: signals, reconnects, several processes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework import Consumer, Context, Publisher
from framework.topology import QueueSpec, Topology
from tests.conftest import AMQP_URL, BrokerAdmin
from tests.integration.apps.slow import Job
from tests.integration.faults import FaultProxy
from tests.integration.worker_kit import (
    EMPTY_TOPOLOGY,
    amqp,
    close_connections_soon,
    count,
    drain,
    eventually,
    kill_tree,
    running,
    settings,
)

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).parent / "kanin")


def handled(log: Path) -> list[tuple[int, int]]:
    if not log.exists():
        return []
    return [tuple(map(int, line.split())) for line in log.read_text().splitlines()]  # type: ignore[misc]


def start(prefix: str, log: Path, *args: str, delay: float = 0.1) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "KANIN_BROKER_URL": AMQP_URL,
        "KANIN_TOPOLOGY": EMPTY_TOPOLOGY,
        "KANIN_TEST_QUEUE": f"{prefix}.jobs",
        "KANIN_TEST_LOG": str(log),
        "KANIN_TEST_DELAY": str(delay),
        "KANIN_SHUTDOWN_GRACE": "20",
    }
    if "--processes" in args:  # several processes share their idempotency keys in Redis
        env["KANIN_IDEMPOTENCY_URL"] = "redis://127.0.0.1:6379/0"
        env["KANIN_IDEMPOTENCY_RETENTION"] = "300"
    return subprocess.Popen(
        [KANIN, "run", "tests.integration.apps.slow", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


async def publish_jobs(prefix: str, numbers: range) -> None:
    async with amqp() as channel:
        await channel.declare_queue(
            f"{prefix}.jobs",
            durable=True,
            arguments={
                "x-queue-type": "classic",
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": f"{prefix}.jobs.dlq",
            },
        )
    async with Publisher(settings()) as publisher:
        await publisher.publish_many(
            (Job(n=n) for n in numbers), exchange="", routing_key=f"{prefix}.jobs"
        )


async def test_sigterm_with_messages_in_flight_loses_nothing(prefix: str, tmp_path: Path) -> None:
    log = tmp_path / "handled.log"
    await publish_jobs(prefix, range(100))
    process = start(prefix, log, delay=0.2)
    try:
        await eventually(lambda: len(handled(log)) >= 15, within=30, what="15 handled")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        kill_tree(process)
    assert process.returncode == 0, stderr
    done = [n for _, n in handled(log)]
    assert len(done) == len(set(done)), "a message was handled twice"
    async with amqp() as channel:
        left = [json.loads(m.body)["n"] for m in await drain(channel, f"{prefix}.jobs")]
    assert not set(done) & set(left), "a handled message was not acked"
    assert sorted(done + left) == list(range(100)), "a message was lost"
    assert "consumer tests.integration.apps.slow.SlowJob started on" in stderr
    assert f"SlowJob on {prefix}.jobs: received" in stderr


async def test_consumers_resume_after_the_broker_closes_connections(
    prefix: str, admin: BrokerAdmin
) -> None:
    seen: set[int] = set()

    class Counting(Consumer):
        queue = f"{prefix}.work"
        prefetch = 5

        async def handle(self, event: Job, ctx: Context) -> None:
            await asyncio.sleep(0.02)
            seen.add(event.n)

    specs = Topology(queues=[QueueSpec(name=f"{prefix}.work")])
    service = f"{prefix}-svc"
    async with running(Counting, topology=specs, service_name=service) as worker:
        async with Publisher(settings()) as publisher:
            await publisher.publish_many(
                (Job(n=n) for n in range(60)), exchange="", routing_key=f"{prefix}.work"
            )
        await eventually(lambda: len(seen) >= 10, what="10 handled")
        assert await close_connections_soon(admin, service) == 1  # this worker's only
        await eventually(lambda: worker.reconnects >= 1 and worker.ready, what="reconnected")
        async with Publisher(settings()) as publisher:
            await publisher.publish_many(
                (Job(n=n) for n in range(60, 100)), exchange="", routing_key=f"{prefix}.work"
            )
        await eventually(lambda: len(seen) == 100, within=30, what="all 100 handled")
        async with amqp() as channel:
            await eventually(lambda: True)
            assert await count(channel, f"{prefix}.work") == 0


async def test_processes_share_the_queue(prefix: str, tmp_path: Path) -> None:
    log = tmp_path / "handled.log"
    await publish_jobs(prefix, range(40))
    process = start(prefix, log, "--processes", "2", delay=0.05)
    try:
        await eventually(lambda: len(handled(log)) == 40, within=60, what="40 handled")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        kill_tree(process)
    assert process.returncode == 0, stderr
    pids = {pid for pid, _ in handled(log)}
    assert len(pids) == 2
    assert sorted(n for _, n in handled(log)) == list(range(40))


def test_no_declare_with_missing_queues_exits_1(prefix: str, tmp_path: Path) -> None:
    process = start(prefix, tmp_path / "log", "--no-declare")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert f"missing on the broker: {prefix}.jobs" in stderr


def test_run_without_consumers_exits_2() -> None:
    result = subprocess.run(
        [KANIN, "run", "json"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "no consumer classes in 'json'" in result.stderr
    result = subprocess.run(
        [KANIN, "run", "no.such.module"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "cannot import 'no.such.module'" in result.stderr


def kanin_publish(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KANIN, "publish", *args],
        env={**os.environ, "KANIN_BROKER_URL": AMQP_URL},
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_kanin_publish(prefix: str, tmp_path: Path) -> None:
    async with amqp() as channel:
        await channel.declare_queue(f"{prefix}.in", durable=True)
        body = tmp_path / "order.json"
        body.write_text('{"n": 9}')
        result = await asyncio.to_thread(
            kanin_publish,
            "",
            f"{prefix}.in",
            "--data",
            f"@{body}",
            "--type",
            "test.job",
            "-H",
            "tenant=acme",
            "-H",
            "x-event-version=2",
            "--count",
            "3",
        )
        assert result.returncode == 0, result.stderr
        assert f"published 3 messages to the default exchange [{prefix}.in]" in result.stdout
        messages = await drain(channel, f"{prefix}.in")
    assert len(messages) == 3
    assert len({m.message_id for m in messages}) == 3
    first = messages[0]
    assert (first.body, first.type, first.content_type) == (
        b'{"n": 9}',
        "test.job",
        "application/json",
    )
    assert first.headers == {"x-attempt": 1, "x-event-version": 2, "tenant": "acme"}

    unroutable = await asyncio.to_thread(kanin_publish, "", f"{prefix}.absent", "--data", "{}")
    assert unroutable.returncode == 1
    assert "routed routing key" in unroutable.stderr
    bad = await asyncio.to_thread(kanin_publish, "", f"{prefix}.in", "--data", "{nope")
    assert bad.returncode == 2
    assert "--data is not JSON" in bad.stderr


async def test_forked_workers_stop_when_their_parent_is_killed(prefix: str, tmp_path: Path) -> None:
    log = tmp_path / "handled.log"
    await publish_jobs(prefix, range(4))
    process = start(prefix, log, "--processes", "2", delay=0.01)
    try:
        await eventually(lambda: len(handled(log)) == 4, within=60, what="4 handled")
        children = {pid for pid, _ in handled(log)}
        process.send_signal(signal.SIGKILL)  # the parent only: no chance to forward anything
        process.wait(timeout=30)

        def gone() -> bool:
            return all(not Path(f"/proc/{pid}").exists() for pid in children)

        await eventually(gone, within=30, what="orphaned workers stopped")
    finally:
        kill_tree(process)


async def test_reconnecting_to_a_deleted_queue_does_not_pile_up_connections(
    prefix: str, admin: BrokerAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    class Lonely(Consumer):
        queue = f"{prefix}.work"

        async def handle(self, event: Job, ctx: Context) -> None:
            pass

    name = f"{prefix}-svc"
    specs = Topology(queues=[QueueSpec(name=f"{prefix}.work")])

    def tries() -> int:
        return sum(
            "consuming" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records
        )

    def open_connections() -> int:
        return sum(
            1
            for c in admin.request("GET", "connections")
            if (c.get("client_properties") or {}).get("connection_name") == name
        )

    with caplog.at_level(logging.WARNING, logger="kanin.worker"):
        async with running(Lonely, topology=specs, service_name=name) as worker:
            async with amqp() as channel:
                await channel.queue_delete(f"{prefix}.work")  # consume now fails on every try
            await eventually(lambda: tries() >= 4, within=30, what="four failed tries")
            assert not worker.ready and worker.transport.reconnects == 0  # one connection kept
            await eventually(lambda: open_connections() == 1, what="the broker lists one")


async def test_json_logs_and_console_spans(prefix: str, tmp_path: Path) -> None:
    """--log-format json: every stderr line is a JSON object, handling lines carry the
    trace and span ids of the spans --trace-console prints; the password never shows."""
    log = tmp_path / "handled.log"
    process = start(
        prefix, log, "--log-format", "json", "--trace-console", "--log-level", "DEBUG", delay=0
    )
    try:
        await publish_jobs(prefix, range(2))
        await eventually(lambda: len(handled(log)) == 2, within=30, what="2 handled")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.to_thread(process.communicate, timeout=30)
    finally:
        kill_tree(process)
    assert process.returncode == 0, stderr[-2000:]
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    assert {"time", "level", "logger", "message", "trace_id", "span_id"} <= set(lines[0])
    started = [x for x in lines if "started on" in x["message"]]
    assert started and started[0]["trace_id"] is None
    password = AMQP_URL.split(":")[2].split("@")[0]
    assert f":{password}@" not in stderr and f":{password}@" not in stdout

    spans = json.loads("[" + stdout.replace("}\n{", "},\n{") + "]")  # ConsoleSpanExporter
    name = f"process amq.default:{prefix}.jobs:{prefix}.jobs"
    processed = [s for s in spans if s["name"] == name]
    assert len(processed) == 2
    assert {s["kind"] for s in processed} == {"SpanKind.CONSUMER"}
    span_ids = {s["context"]["span_id"].removeprefix("0x") for s in processed}
    in_span = [x for x in lines if x["span_id"] is not None]
    assert in_span and {x["span_id"] for x in in_span} <= span_ids


async def test_a_worker_waits_for_the_broker_at_start_and_takes_the_host_that_answers(
    prefix: str, tmp_path: Path
) -> None:
    """--wait-for-broker: no restart loop while the broker starts; a host list falls
    through to the host that answers."""
    log = tmp_path / "handled.log"
    await publish_jobs(prefix, range(3))
    async with FaultProxy() as proxy:
        proxy.refuse()  # the broker is "not up yet"
        dead = f"127.0.0.1:{proxy.port}"
        live = AMQP_URL.split("@")[1].rstrip("/")
        url = f"amqp://guest:guest@{dead},{dead}/"  # only the proxy, twice
        process = start(prefix, log, "--wait-for-broker", "30", "--broker-url", url)
        try:
            proxy.turn_away()  # each try reaches the proxy and is closed at once
            await proxy.accept()
            await eventually(lambda: proxy.accepted >= 3, within=20, what="three tries")
            assert process.poll() is None, "exited instead of waiting for the broker"
            proxy.let_in()
            await eventually(lambda: len(handled(log)) == 3, within=30, what="3 handled")
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
        finally:
            kill_tree(process)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr

    # several hosts, the first refused: the worker takes the one that answers
    await publish_jobs(prefix, range(3, 5))
    process = start(prefix, log, "--broker-url", f"amqp://guest:guest@127.0.0.1:1,{live}/")
    try:
        await eventually(lambda: len(handled(log)) == 5, within=30, what="5 handled")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
    finally:
        kill_tree(process)
    assert process.returncode == 0, stderr


def test_a_broker_that_never_answers_is_exit_1_after_the_wait(prefix: str, tmp_path: Path) -> None:
    url = "amqp://guest:secret-pw@127.0.0.1:1,127.0.0.1:2/"
    began = time.monotonic()
    process = start(prefix, tmp_path / "log", "--wait-for-broker", "2", "--broker-url", url)
    _, stderr = process.communicate(timeout=60)
    took = time.monotonic() - began
    assert process.returncode == 1, stderr
    assert 2 <= took < 20
    (line,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    prefix_ = "error: cannot connect to amqp://guest@127.0.0.1:1,127.0.0.1:2/ within 2s: "
    assert line.startswith(prefix_) and line.endswith(": connection refused"), stderr
    assert "secret-pw" not in stderr and "Traceback" not in stderr


async def test_sigterm_while_waiting_for_the_broker_stops_at_once(
    prefix: str, tmp_path: Path
) -> None:
    async with FaultProxy() as proxy:
        proxy.turn_away()
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        process = start(prefix, tmp_path / "log", "--wait-for-broker", "120", "--broker-url", url)
        try:
            await eventually(lambda: proxy.accepted >= 2, within=30, what="trying to connect")
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.to_thread(process.communicate, timeout=60)
        finally:
            kill_tree(process)
    assert process.returncode == 0, stderr
    assert time.monotonic() - began < 10
    assert "Traceback" not in stderr

"""The scenarios of tests/bench/peers.py that run each contender's worker as a process of
its own (peer_workers.py, or ``kanin run peer_kanin``): latency, failure mix, memory and
scale-out. Each worker reports through peer_record.py; queues get a random suffix and are
deleted after each run.
"""

from __future__ import annotations

import asyncio
import functools
import glob
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import consume as base
import peer_senders as senders

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parents[1]
KANIN = Path(sys.executable).parent / "kanin"
NAMES = ["raw aio-pika", "kanin", "FastStream", "Dramatiq", "Celery"]
SLUG = {
    "raw aio-pika": "raw",
    "kanin": "kanin",
    "FastStream": "faststream",
    "Dramatiq": "dramatiq",
    "Celery": "celery",
}
LEFTOVERS = {"raw aio-pika": [".wait"], "kanin": [".retry.1", ".dlq"], "Dramatiq": [".DQ", ".XQ"]}
TOPOLOGY = "queues:\n  - name: {queue}\n    retry: {{attempts: 2, backoff: fixed, initial: 1s}}\n"
SHARED = {
    "KANIN_IDEMPOTENCY_URL": os.environ.get("KANIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
    "KANIN_IDEMPOTENCY_RETENTION": "120",
}  # the keys expire two minutes after the run
TIMEOUT = float(os.environ.get("KANIN_BENCH_TIMEOUT", "300"))


class WorkerProcess:
    """One contender's worker, started in a folder of its own, stopped with SIGTERM."""

    def __init__(
        self,
        name: str,
        queue: str,
        mode: str = "drain",
        expect: int = 0,
        processes: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name, self.queue, self.processes = name, queue, processes
        self.dir = Path(tempfile.mkdtemp(prefix="kanin-bench-"))
        env = {
            **os.environ,
            "BENCH_QUEUE": queue,
            "BENCH_RECORD": str(self.dir / "record"),
            "BENCH_MODE": mode,
            "BENCH_EXPECT": str(expect),
            "KANIN_BROKER_URL": base.URL,
            "PYTHONPATH": f"{BENCH}{os.pathsep}{ROOT}",
            **(env or {}),
        }
        if name == "kanin":
            (self.dir / "topology.yaml").write_text(TOPOLOGY.format(queue=queue))
            command = [
                str(KANIN),
                "run",
                "peer_kanin",
                "--topology",
                "topology.yaml",
                "--prefetch",
                str(base.PREFETCH),
                "--concurrency",
                str(base.PREFETCH),
                "--processes",
                str(processes),
                "--log-level",
                "WARNING",
            ]
        else:
            command = [sys.executable, str(BENCH / "peer_workers.py"), SLUG[name]]
        self.log = open(self.dir / "output", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, cwd=self.dir, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )

    def failed(self, why: str) -> RuntimeError:
        tail = (self.dir / "output").read_text()[-2000:]
        return RuntimeError(f"{self.name} worker: {why}\n{tail}")

    async def ready(self, connection: aio_pika.abc.AbstractConnection) -> None:
        """Until the broker counts this worker's consumers on its queue."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self.failed(f"exited with {self.process.returncode}")
            try:
                async with connection.channel() as channel:
                    queue = await channel.declare_queue(self.queue, passive=True)
                    if queue.declaration_result.consumer_count >= self.processes:
                        return
            except aio_pika.exceptions.ChannelClosed:
                pass  # not declared yet
            await asyncio.sleep(0.1)
        raise self.failed("no consumer after 60 s")

    def total(self) -> dict[str, Any]:
        """The summaries of every process of this worker, added up."""
        parts = []
        for path in glob.glob(str(self.dir / "record.*[0-9].json")):
            try:
                parts.append(json.loads(Path(path).read_text()))
            except (OSError, ValueError):
                continue  # being replaced: the next read gets it
        total: dict[str, Any] = {
            key: sum(p[key] for p in parts)
            for key in ("count", "distinct", "twice", "healthy", "failures", "cpu")
        }
        started = [p["first"] for p in parts if p["first"]]
        total["first"] = min(started, default=0.0)
        total["last"] = max((p["last"] for p in parts), default=0.0)
        total["healthy_last"] = max((p["healthy_last"] for p in parts), default=0.0)
        return total

    async def until(
        self,
        done: Callable[[dict[str, Any]], bool],
        limit: float = TIMEOUT,
        sample: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            total = self.total()
            if done(total):
                return total
            if self.process.poll() is not None:
                raise self.failed(f"exited with {self.process.returncode}")
            if sample is not None:
                sample()
            await asyncio.sleep(0.02)
        return self.total()

    def latencies(self) -> list[float]:
        """How long each message waited, in ms (latency mode, once all were handled)."""
        files = glob.glob(str(self.dir / "record.*.lat.json"))
        return [w * 1000 for w in json.loads(Path(files[0]).read_text())] if files else []

    def status(self, field: str) -> float:
        """A ``/proc/<pid>/status`` memory field of the worker, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


async def delete(connection: aio_pika.abc.AbstractConnection, name: str, queue: str) -> None:
    async with connection.channel() as channel:
        for suffix in ["", *LEFTOVERS.get(name, [])]:
            await channel.queue_delete(queue + suffix)
        if name == "Celery":  # its direct exchange named after the queue
            await channel.exchange_delete(queue)


def fresh(name: str) -> str:
    return f"kanin-bench-peer-{SLUG[name]}-{uuid.uuid4().hex[:8]}"


async def declared(
    connection: aio_pika.abc.AbstractConnection,
    name: str,
    processes: int = 1,
    measure: bool = False,
    env: dict[str, str] | None = None,
) -> tuple[str, float]:
    """A queue declared by the contender's own worker (started, then stopped), and that
    worker's idle RSS in MB when ``measure`` (3 s after it was ready)."""
    queue = fresh(name)
    worker = WorkerProcess(name, queue, "idle", processes=processes, env=env)
    try:
        await worker.ready(connection)
        if measure:
            await asyncio.sleep(3)
        return queue, worker.status("VmRSS") if measure else 0.0
    finally:
        worker.stop()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def latency(
    connection: aio_pika.abc.AbstractConnection, name: str, rate: float, seconds: float
) -> dict[str, float]:
    """Publish at ``rate`` for ``seconds`` to an idle worker: publish to handler start, ms."""
    count = int(rate * seconds)
    queue = fresh(name)
    worker = WorkerProcess(name, queue, "latency", expect=count)
    try:
        await worker.ready(connection)
        reached = await senders.paced(name, queue, rate, count)
        await worker.until(lambda t: t["count"] >= count)
        waits = worker.latencies()
        if not waits:
            raise worker.failed(f"{worker.total()['count']} of {count} handled")
    finally:
        worker.stop()
        await delete(connection, name, queue)
    return {
        "rate": reached,
        "p50": percentile(waits, 0.50),
        "p95": percentile(waits, 0.95),
        "p99": percentile(waits, 0.99),
        "max": max(waits),
    }


async def drained(
    connection: aio_pika.abc.AbstractConnection,
    name: str,
    count: int,
    fail_every: int = 0,
    processes: int = 1,
    env: dict[str, str] | None = None,
) -> tuple[dict[str, Any], float]:
    """A backlog of ``count`` published with the contender's API, then drained by a fresh
    worker: its summary 1.5 s after the last message (time for a copy handled twice),
    with ``broker_cores`` (the RabbitMQ node's CPU, in cores, from the first message to
    the last healthy one), and its peak RSS in MB."""
    queue, _ = await declared(connection, name, processes, env=env)
    samples: list[tuple[float, float]] = []
    try:
        await senders.backlog(name, queue, count, fail_every)
        worker = WorkerProcess(name, queue, processes=processes, env=env)
        try:
            await worker.until(
                lambda t: t["distinct"] >= count,
                sample=lambda: samples.append((time.time(), broker_cpu())),
            )
            await asyncio.sleep(1.5)
            total = worker.total()
            peak = worker.status("VmHWM")
        finally:
            worker.stop()
    finally:
        await delete(connection, name, queue)
    inside = [s for s in samples if total["first"] <= s[0] <= total["healthy_last"]] or samples
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    total["broker_cores"] = (c1 - c0) / (t1 - t0) if t1 > t0 else float("nan")
    return total, peak


def rate(total: dict[str, Any], key: str = "count", last: str = "last") -> float:
    return total[key] / (total[last] - total["first"])


async def failure_mix(
    connection: aio_pika.abc.AbstractConnection, name: str, count: int
) -> dict[str, float]:
    """The same backlog drained with no failures, then with every 10th message failing once:
    healthy messages/s in both, and what was lost or handled twice."""
    clean, _ = await drained(connection, name, count)
    mixed, _ = await drained(connection, name, count, fail_every=10)
    return {
        "clean": rate(clean),
        "healthy": rate(mixed, "healthy", "healthy_last"),
        "ratio": rate(mixed, "healthy", "healthy_last") / rate(clean),
        "lost": count - mixed["distinct"],
        "twice": mixed["twice"] + clean["twice"],
        "retried": mixed["failures"],
        "broker_cores_clean": clean["broker_cores"],
        "broker_cores_mixed": mixed["broker_cores"],
    }


async def memory(
    connection: aio_pika.abc.AbstractConnection, name: str, count: int
) -> dict[str, float]:
    """Idle RSS with one consumer, and peak RSS while draining a backlog of ``count``."""
    queue, idle = await declared(connection, name, measure=True)
    await delete(connection, name, queue)
    _, peak = await drained(connection, name, count)
    return {"idle_mb": idle, "peak_mb": peak, "growth_mb": peak - idle}


@functools.cache
def _broker_stat() -> Path | None:
    """The ``/proc/<pid>/stat`` of the local RabbitMQ node (its beam.smp process)."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            if Path(stat).with_name("comm").read_text().strip() == "beam.smp":
                return Path(stat)
        except OSError:
            continue
    return None


def broker_cpu() -> float:
    """CPU seconds of the local RabbitMQ node so far (NaN where it cannot be read)."""
    stat = _broker_stat()
    if stat is None:
        return float("nan")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scale(
    connection: aio_pika.abc.AbstractConnection,
    name: str,
    processes: int,
    count: int,
    keys: str = "",
) -> dict[str, float]:
    """Drain ``count`` with ``processes`` worker processes; the broker's share of the
    machine's CPU meanwhile. kanin refuses --processes 2 with its per-process
    idempotency store: ``keys`` is ``off`` (no deduplication) or ``redis`` (shared)."""
    env = {"off": {"KANIN_IDEMPOTENCY_URL": "off"}, "redis": SHARED}.get(keys, {})
    total, _ = await drained(connection, name, count, processes=processes, env=env)
    return {
        "rate": rate(total),
        "client_cpu_us": total["cpu"] / total["count"] * 1e6,
        "broker_cpu_share": total["broker_cores"] / (os.cpu_count() or 1),
    }


def spread(values: list[float]) -> str:
    return f"{min(values):,.1f}..{max(values):,.1f}"


def median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)

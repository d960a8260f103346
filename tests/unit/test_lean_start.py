"""What a worker loads at start: only what it uses. The metrics server's prometheus_client,
the OpenTelemetry SDK, tenacity, the embedded broker and the feature packages load when
a worker (or a command) needs them, not with the CLI (docs/benchmarks.md, memory)."""

from __future__ import annotations

import json
import subprocess
import sys

NOT_AT_START = (
    "prometheus_client",
    "opentelemetry.sdk",
    "tenacity",
    "framework.transport.memory",
    "framework.demo",
    "framework.testing",
    "framework.probes",
    "framework.metrics",
    "framework.spans",
    "framework.eventlog",
    "framework.outbox",
    "framework.contracts",
    "framework.ops",
)

WORKER = """
import json, sys
import framework.cli
from framework import Consumer, Context, Event, Settings, Worker

class Ping(Event, type="ping"):
    n: int

class Pong(Consumer):
    queue = "pings"

    async def handle(self, event: Ping, ctx: Context) -> None: ...

settings = Settings(_env_file=None, broker_url="amqp://guest:guest@127.0.0.1:5672/", {extra})
worker = Worker([Pong], settings)
print(json.dumps(sorted(sys.modules)))
"""


def loaded(extra: str = "") -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", WORKER.format(extra=extra)],
        capture_output=True, text=True, check=True, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return set(json.loads(out.stdout))


def found(modules: set[str], prefix: str) -> bool:
    return any(m == prefix or m.startswith(prefix + ".") for m in modules)


def test_a_worker_without_metrics_or_tracing_loads_neither() -> None:
    modules = loaded()
    assert "framework.worker" in modules and "framework.cli.run" in modules
    assert [p for p in NOT_AT_START if found(modules, p)] == []


def test_the_metrics_server_loads_prometheus_when_it_is_asked_for() -> None:
    modules = loaded("http_port=0")
    assert found(modules, "prometheus_client") and "framework.probes" in modules
    assert not found(modules, "opentelemetry.sdk")

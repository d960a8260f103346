"""Secrets stay secret: a known password in the broker, management, Redis and PostgreSQL
URLs never shows in anything a run that fails in several ways prints, exports or serves:
log lines, errors, spans, metrics, ``--help`` and ``repr()`` of the settings. And a
password file works for every URL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import BrokerAdmin
from tests.integration.otlp import receiving
from tests.integration.test_idempotency import free_port
from tests.integration.test_probes import fetch
from tests.integration.worker_kit import eventually, redis_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).with_name("kanin"))
SECRET = f"Kt-Secret-{os.urandom(6).hex()}"  # in every URL of the failing runs
FILED = f"Kt-Filed-{os.urandom(6).hex()}"  # only in password files
APP = """
import os
from framework import Consumer, Context, Event

PREFIX = os.environ["KT_PREFIX"]


class Job(Event, type="kt.redact.job", version=1):
    n: int


class Plain(Consumer):
    queue = PREFIX + ".plain"
    idempotency = "off"

    async def handle(self, event: Job, ctx: Context) -> None:
        if event.n % 2:
            raise RuntimeError(f"job {event.n} failed")


class Deduplicated(Consumer):
    queue = PREFIX + ".dedup"

    async def handle(self, event: Job, ctx: Context) -> None:
        print(f"deduplicated {event.n}", flush=True)
"""


@pytest.fixture
def user(admin: BrokerAdmin, prefix: str) -> Iterator[str]:
    """A RabbitMQ user whose password is SECRET."""
    name = f"{prefix}-user"
    admin.request("PUT", f"users/{quote(name, safe='')}",
                  {"password": SECRET, "tags": "management"})  # fmt: skip
    admin.request("PUT", f"permissions/%2F/{quote(name, safe='')}",
                  {"configure": ".*", "write": ".*", "read": ".*"})  # fmt: skip
    try:
        yield name
    finally:
        admin.request("DELETE", f"users/{quote(name, safe='')}")


@pytest.fixture
def redis_with_password() -> Iterator[int]:
    """A Redis of the test's own that wants the password FILED."""
    port = free_port()
    with redis_server(port, "--port", str(port), "--requirepass", FILED):
        yield port


@pytest.fixture
def app(tmp_path: Path, prefix: str) -> Path:
    (tmp_path / "redact_app.py").write_text(APP)
    retry = "    retry: {attempts: 2, initial: 100ms}\n"
    (tmp_path / "topology.yaml").write_text(
        f"queues:\n  - name: {prefix}.plain\n{retry}  - name: {prefix}.dedup\n{retry}"
    )
    return tmp_path


def environment(app: Path, prefix: str, **env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KANIN_", "OTEL_"))}
    return {**clean, "PYTHONPATH": f"{app}:{ROOT}", "KT_PREFIX": prefix,
            "KANIN_TOPOLOGY": str(app / "topology.yaml"), "KANIN_SHUTDOWN_GRACE": "5",
            "KANIN_CONNECT_TIMEOUT": "5", **env}  # fmt: skip


def kanin(*args: str, env: dict[str, str]) -> str:
    """Everything a command prints, with its exit code."""
    done = subprocess.run(
        [KANIN, *args], env=env, capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, cwd=env["PYTHONPATH"].split(":")[0],
    )  # fmt: skip
    return f"$ kanin {' '.join(args)} -> exit {done.returncode}\n{done.stdout}{done.stderr}"


def settings_repr(env: dict[str, str]) -> str:
    show = "from framework import Settings; s = Settings(); print(repr(s)); print(s)"
    return subprocess.run(
        [sys.executable, "-c", show], env=env, capture_output=True, text=True, check=True
    ).stdout


async def run_worker(env: dict[str, str], until: str, publish: list[tuple[str, str]]) -> str:
    """``kanin run redact_app`` with ``env``: publish, wait for ``until`` in its output (or
    its end), scrape the probes, stop it; everything it printed and served."""
    port = free_port()
    log = Path(env["PYTHONPATH"].split(":")[0]) / f"worker-{port}.log"
    with log.open("w") as out:
        worker = subprocess.Popen(  # noqa: ASYNC220 - it runs beside the test
            [KANIN, "run", "redact_app", "--http-port", str(port)], env=env, stdout=out,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=log.parent,
        )  # fmt: skip
    printed = []
    try:
        await eventually(lambda: "started on" in log.read_text() or worker.poll() is not None,
                         within=30, what="the worker starting")  # fmt: skip
        for queue, body in publish:
            printed.append(await asyncio.to_thread(kanin, "publish", "", queue, "-d", body,
                                                   "--type", "kt.redact.job", env=env))  # fmt: skip
        await eventually(lambda: until in log.read_text() or worker.poll() is not None,
                         within=30, what=until)  # fmt: skip
        for path in ("/metrics", "/healthz", "/readyz"):
            if worker.poll() is None:
                printed.append(str(await fetch(port, path)))
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)
    return "\n".join([log.read_text(), *printed])


async def test_a_known_password_never_shows_in_what_a_failing_run_prints(
    app: Path, prefix: str, user: str, redis_with_password: int, tmp_path: Path
) -> None:
    seen: dict[str, str] = {}
    urls = {
        "KANIN_BROKER_URL": f"amqp://{user}:{SECRET}@127.0.0.1:5672/",
        "KANIN_MANAGEMENT_URL": f"http://{user}:{SECRET}@127.0.0.1:15672/",
        "KANIN_IDEMPOTENCY_URL": f"redis://:{SECRET}@127.0.0.1:{redis_with_password}/0",
        "KANIN_CHECKPOINT_URL": f"postgresql://postgres:{SECRET}@127.0.0.1:5432/test",
        "KANIN_OUTBOX_URL": f"postgresql://postgres:{SECRET}@127.0.0.1:5432/kt_no_such_db",
    }
    with receiving() as otlp:
        traced = {**environment(app, prefix, **urls), "KANIN_OUTBOX_URL": "",
                  "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint}  # fmt: skip
        seen["a run whose Redis refuses the password"] = await run_worker(
            traced, until="retrying via",
            publish=[(f"{prefix}.plain", '{"n": 1}'), (f"{prefix}.plain", '{"n": 2}'),
                     (f"{prefix}.plain", '{"n": "x"}'), (f"{prefix}.dedup", '{"n": 3}')],
        )  # fmt: skip
        await asyncio.sleep(1)  # the last spans' export
        seen["spans"] = "\n".join(str(span) for _, span in otlp.spans())
    failing = seen["a run whose Redis refuses the password"]
    assert "retrying via" in failing and "invalid username-password pair" in failing, failing
    assert seen["spans"], "no spans were exported"

    env = environment(app, prefix, **urls)
    wrong = {**env, "KANIN_BROKER_URL": f"amqp://guest:{SECRET}@127.0.0.1:5672/",
             "KANIN_MANAGEMENT_URL": f"http://guest:{SECRET}@127.0.0.1:15672/"}  # fmt: skip
    commands = [
        ("publish", "", f"{prefix}.plain", "-d", "{}"),  # a refused login
        ("topology", "plan", str(app / "topology.yaml")),  # a refused management API
        ("status",),
        ("dlq", "list"),
    ]
    for args in commands:
        seen[" ".join(args)] = kanin(*args, env=wrong)
    seen["outbox status"] = kanin("outbox", "status", env=env)  # no such database
    seen["a store URL of no known kind"] = kanin(
        "run", "redact_app", env={**env, "KANIN_IDEMPOTENCY_URL": f"redi://:{SECRET}@h/0"}
    )
    seen["a malformed broker URL"] = kanin(
        "publish", "", "q", "-d", "{}",
        env={**env, "KANIN_BROKER_URL": f"amqp://u:{SECRET}@host:99999/"},
    )  # fmt: skip
    for args in (("run", "--help"), ("publish", "--help"), ("outbox", "status", "--help")):
        seen[" ".join(args)] = kanin(*args, env=env)
    seen["repr of the settings"] = settings_repr(env)

    files = {}
    for name in ("broker", "management", "idempotency", "checkpoint", "outbox"):
        path = tmp_path / f"{name}-password"
        path.write_text(FILED + "\n")
        files[f"KANIN_{name.upper()}_PASSWORD_FILE"] = str(path)
    filed = environment(
        app, prefix, **files, KANIN_BROKER_URL="amqp://guest@127.0.0.1:5672/",
        KANIN_MANAGEMENT_URL=f"http://{user}@127.0.0.1:15672/",
        KANIN_IDEMPOTENCY_URL=f"redis://127.0.0.1:{redis_with_password}/0",
        KANIN_CHECKPOINT_URL="postgresql://postgres@127.0.0.1:5432/test",
        KANIN_OUTBOX_URL="postgresql://postgres@127.0.0.1:5432/kt_no_such_db",
    )  # fmt: skip
    seen["repr with password files"] = settings_repr(filed)
    seen["outbox status with a password file"] = kanin("outbox", "status", env=filed)
    seen["a refused login from a password file"] = kanin(
        "publish", "", f"{prefix}.plain", "-d", "{}", env=filed
    )
    assert "ACCESS_REFUSED" in seen["a refused login from a password file"]  # guest/FILED
    for_user = {**filed, "KANIN_BROKER_URL": f"amqp://{user}@127.0.0.1:5672/",
                "KANIN_BROKER_PASSWORD_FILE": ""}  # fmt: skip
    (tmp_path / "broker-password").write_text(SECRET)
    for_user["KANIN_BROKER_PASSWORD_FILE"] = str(tmp_path / "broker-password")
    (tmp_path / "management-password").write_text(SECRET)
    seen["topology plan with password files"] = planned = kanin(
        "topology", "plan", str(app / "topology.yaml"), env=for_user
    )
    assert "exit 0" in planned.splitlines()[0], planned  # the management API let it in
    no_outbox = {**for_user, "KANIN_OUTBOX_URL": "", "KANIN_OUTBOX_PASSWORD_FILE": ""}
    seen["a run on a Redis with a password file"] = handled = await run_worker(
        no_outbox, until="deduplicated 4", publish=[(f"{prefix}.dedup", '{"n": 4}')]
    )
    assert "deduplicated 4" in handled, handled

    shown = {where: text for where, text in seen.items() if SECRET in text or FILED in text}
    assert not shown, "\n\n".join(f"== {where}\n{text}" for where, text in shown.items())
    assert "***" in seen["repr of the settings"], seen["repr of the settings"]

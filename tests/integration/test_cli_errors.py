"""Every `kanin` command, fed bad input: one clear line naming the input, exit 1 or 2,
never a traceback. Broker-side cases use the real RabbitMQ (a wrong password, a vhost
that does not exist, an internal exchange, a port where nothing listens)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import pytest

from tests.conftest import AMQP_URL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).parent / "kanin")
HOST = AMQP_URL.split("@")[1].split("/")[0]
NOWHERE = "amqp://guest:guest@127.0.0.1:1/"


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # every one of these is in the error line
    env: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        env = " ".join(f"{k}={v!r}" for k, v in self.env.items())
        return f"{env} kanin {' '.join(self.args)}".strip()


def cases(prefix: str, tmp: Path) -> list[Case]:
    good = str(ROOT / "config" / "topology.yaml")
    body = tmp / "order.json"
    body.write_text('{"order_id": "o-1"}')
    (tmp / "broken_module.py").write_text(
        "from framework import Consumer, Context, Event\n"
        "class Ping(Event, type='ping', version=1):\n    n: int\n"
        "class NoQueue(Consumer):\n"
        "    async def handle(self, event: Ping, ctx: Context) -> None: ...\n"
    )
    (tmp / "sync_module.py").write_text(
        "from framework import Consumer, Context, Event\n"
        "class Ping(Event, type='ping', version=1):\n    n: int\n"
        "class Sync(Consumer):\n    queue = 'q'\n"
        "    def handle(self, event: Ping, ctx: Context) -> None: ...\n"
    )
    run = ("run", "tests.integration.apps.slow", "--wait-for-broker", "0")
    publish = ("publish", "", f"{prefix}.in", "--data", "{}")
    return [
        # the command line itself
        Case(("run", "x", "--bogus"), 2, ("No such option: --bogus", "kanin run --help")),
        Case(("run", "x", "--log-level", "LOUD"), 2, ("--log-level", "'LOUD'")),
        Case(("run", "x", "--log-format", "xml"), 2, ("--log-format", "'xml'")),
        Case(("run", "x", "--prefetch", "0"), 2, ("--prefetch",)),
        Case(("run",), 2, ("Missing argument",)),
        Case(("publish", "a", "b"), 2, ("Missing option '--data'",)),
        Case(("topology", "plan", good, "--nope"), 2, ("No such option: --nope",)),
        Case(("demo", "--seed", "nope"), 2, ("'nope'", "module:name")),
        # settings from the environment
        Case(run, 2, ("KANIN_PREFETCH", "integer"), {"KANIN_PREFETCH": "many"}),
        Case(run, 2, ("KANIN_PUBLISH_TIMEOUT", "greater than 0"), {"KANIN_PUBLISH_TIMEOUT": "-1"}),
        Case(publish, 2, ("KANIN_BROKER_URL", "amqp://"), {"KANIN_BROKER_URL": ""}),
        Case(publish, 2, ("KANIN_BROKER_URL", "port 'x'"), {"KANIN_BROKER_URL": "amqp://h:x/"}),
        Case(
            ("topology", "plan", good),
            2,
            ("KANIN_MANAGEMENT_URL", "http://"),
            {"KANIN_MANAGEMENT_URL": "nonsense"},
        ),
        Case(
            publish,
            2,
            ("KANIN_BROKER_PASSWORD_FILE", "/no/such/file"),
            {"KANIN_BROKER_PASSWORD_FILE": "/no/such/file"},
        ),
        Case(
            ("topology", "validate"),
            2,
            ("/no/such.yaml", "cannot read file"),
            {"KANIN_TOPOLOGY": "/no/such.yaml"},
        ),
        Case(
            run,
            2,
            ("topology file /no/such.yaml", "KANIN_TOPOLOGY"),
            {"KANIN_TOPOLOGY": "/no/such.yaml"},
        ),
        # files and targets
        Case(
            ("run", "tests.integration.apps.slow", "--topology", "/no/t.yaml"),
            2,
            ("/no/t.yaml", "--topology"),
        ),
        Case(("publish", "", "q", "--data", "@/no/body.json"), 2, ("--data @/no/body.json",)),
        Case(("publish", "", "q", "--data", "{oops"), 2, ("--data is not JSON",)),
        Case(("run", "broken_module"), 2, ("broken_module.NoQueue", "'queue'")),
        Case(("run", "sync_module"), 2, ("sync_module.Sync.handle", "async def", "to_thread")),
        Case(("run", "no.such.module"), 2, ("no module named 'no'",)),
        Case(("topology", "validate", good), 0, (), {"KANIN_MANAGEMENT_URL": ""}),
        Case(
            (*run, "--processes", "2"),
            2,
            ("--processes 2", "memory://", "KANIN_IDEMPOTENCY_URL", "redis://", "off"),
        ),
        # the broker and its management API
        Case((*publish, "--broker-url", NOWHERE), 1, ("cannot connect", "connection refused")),
        Case(("topology", "apply", good, "--broker-url", NOWHERE), 1, ("connection refused",)),
        Case(("topology", "plan", good, "--broker-url", NOWHERE), 1, ("connection refused",)),
        Case((*run, "--broker-url", NOWHERE), 1, ("cannot connect", "127.0.0.1:1")),
        Case(
            ("topology", "plan", good),
            1,
            ("management API", "127.0.0.1:1", "KANIN_MANAGEMENT_URL"),
            {"KANIN_MANAGEMENT_URL": "http://127.0.0.1:1/"},
        ),
        Case(
            (*publish, "--broker-url", f"amqp://guest:wrong-pw@{HOST}/"),
            1,
            ("cannot connect", "ACCESS_REFUSED"),
        ),
        Case(
            (*publish, "--broker-url", f"amqp://guest:guest@{HOST}/{prefix}-novhost"),
            1,
            ("cannot connect", f"refused to open vhost '{prefix}-novhost'"),
        ),
        Case(
            ("publish", f"{prefix}.internal", "k", "--data", "{}"),
            1,
            (f"{prefix}.internal", "ACCESS_REFUSED", "internal"),
        ),
        Case(
            ("publish", f"{prefix}.absent", "k", "--data", "{}"),
            1,
            (f"{prefix}.absent", "NOT_FOUND"),
        ),
        Case(publish, 1, (f"{prefix}.in", "routed routing key", "NO_ROUTE")),
        Case(("publish", "", f"{prefix}.bound", "--data", f"@{body}", "--type", "x.y"), 0, ()),
    ]


@pytest.fixture
def internal_exchange(prefix: str) -> Iterator[None]:
    async def declare() -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            channel = await connection.channel()
            await channel.declare_exchange(f"{prefix}.internal", "topic", internal=True)
            queue = await channel.declare_queue(f"{prefix}.bound", auto_delete=False)
            await queue.bind(f"{prefix}.internal", "#")

    import asyncio

    asyncio.run(declare())
    yield


def run(case: Case, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KANIN_", "OTEL_"))}
    env.update({"KANIN_BROKER_URL": AMQP_URL, "PYTHONPATH": str(ROOT)}, **case.env)
    return subprocess.run(
        [KANIN, *case.args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_every_command_turns_bad_input_into_one_line(
    prefix: str, tmp_path: Path, internal_exchange: None
) -> None:
    table = cases(prefix, tmp_path)
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda case: run(case, tmp_path), table))
    wrong = []
    for case, result in zip(table, results, strict=True):
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        trouble = []
        if result.returncode != case.code:
            trouble.append(f"exit {result.returncode}, not {case.code}")
        if "Traceback" in result.stderr:
            trouble.append("a traceback")
        if case.code and len(errors) != 1:
            trouble.append(f"{len(errors)} error lines")
        elif case.code:
            missing = [word for word in case.says if word not in errors[0]]
            if missing:
                trouble.append(f"{errors[0]!r} does not say {missing}")
            others = [line for line in result.stderr.splitlines() if line not in errors]
            if case.args[0] != "run" and others:
                trouble.append(f"more lines: {others}")
        if "wrong-pw" in result.stderr + result.stdout:
            trouble.append("the password shows")
        if trouble:
            wrong.append(f"{case}: {'; '.join(trouble)}\n    {result.stderr.strip()[-600:]}")
    assert not wrong, "\n".join(wrong)


def test_without_a_topology_file_kanin_run_says_which_consumers_run_without_retries(
    tmp_path: Path,
) -> None:
    case = Case(
        ("run", "tests.integration.apps.slow", "--wait-for-broker", "0", "--broker-url", NOWHERE),
        1,
        (),
    )
    result = run(case, tmp_path)  # no config/ here
    assert result.returncode == 1, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if "no topology file" in line]
    assert f"no topology file at {tmp_path}/config/topology.yaml (the default" in warning
    assert "tests.integration.apps.slow.SlowJob (kanin.test.slow) run with 1 attempt" in warning

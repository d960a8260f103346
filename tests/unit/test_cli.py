"""The installed `kanin` console script: output and exit codes (0 ok, 1 runtime, 2 usage/config)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

KANIN = str(Path(sys.executable).parent / "kanin")


def kanin(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KANIN, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
    )


def test_version() -> None:
    result = kanin("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("kanin 0.")


def test_validate_prints_a_summary() -> None:
    result = kanin("topology", "validate", "config/topology.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "config/topology.yaml: ok",
        "  2 exchanges, 6 queues, 9 bindings",
        "  generated: 16 retry queues, 5 dead-letter queues",
    ]


def test_validate_defaults_to_the_configured_file(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "topology.yaml").write_text("queues:\n  - name: only\n")
    result = kanin("topology", "validate", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 queue, 0 bindings" in result.stdout


def test_invalid_file_exits_2_with_file_line_and_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("queues:\n  - name: a\n    retry:\n      attempts: zero\n")
    result = kanin("topology", "validate", str(bad))
    assert result.returncode == 2
    assert f"{bad}:4:7: queues[0].retry.attempts: Input should be a valid integer" in result.stderr
    assert "invalid topology" not in result.stderr  # one problem: one line
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("queues: [\n")
    result = kanin("topology", "apply", str(bad))
    assert result.returncode == 2
    assert f"{bad}:2:1: YAML syntax error" in result.stderr


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = kanin("topology", "validate", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "cannot read file" in result.stderr


def test_unknown_option_is_a_usage_error() -> None:
    assert kanin("topology", "validate", "--frobnicate").returncode == 2


COMMANDS = [
    [],
    ["run"],
    ["demo"],
    ["publish"],
    ["status"],
    ["topology"],
    *[["topology", c] for c in ("validate", "plan", "apply", "graph", "export")],
    ["events"],
    ["events", "tail"],
    ["events", "snapshot"],
    ["events", "check"],
    ["replay"],
    ["asyncapi"],
    ["docs"],
    ["outbox"],
    *[["outbox", c] for c in ("init", "status", "relay")],
    ["dlq"],
    *[["dlq", c] for c in ("list", "show", "replay", "purge", "export")],
]
# the type labels a help text shows for an option or argument without a metavar
TYPE_LABEL = re.compile(
    r"<(str|int|float|bool|path|file|list\[[^]]*\]|\w+ range|[\w-]+(\|[\w-]+)+)>"
)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "kanin")
def test_help_everywhere_reads_well_in_80_columns(args: list[str]) -> None:
    from typer.testing import CliRunner

    from framework.cli import app

    for flag in ("--help", "-h"):
        result = CliRunner().invoke(app, [*args, flag], prog_name="kanin", env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Usage: kanin {' '.join(args)}".rstrip())
        assert [line for line in result.output.splitlines() if len(line) > 80] == []
        assert TYPE_LABEL.findall(result.output) == [], result.output


def test_help_of_the_console_script() -> None:
    result = kanin("-h")
    assert result.returncode == 0 and result.stdout.startswith("Usage: kanin [OPTIONS]")
    assert "--install-completion" in result.stdout


def test_shell_completion_completes_commands() -> None:
    script = subprocess.run(  # from bash: the shell it detects (``; true``: no exec)
        ["bash", "-c", f"{KANIN} --show-completion; true"], capture_output=True, text=True,
        timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert "_KANIN_COMPLETE=complete_bash" in script.stdout, script.stderr
    completed = subprocess.run(
        [KANIN], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "_KANIN_COMPLETE": "complete_bash", "COMP_WORDS": "kanin dl",
             "COMP_CWORD": "1"},
    )  # fmt: skip
    assert completed.stdout.split() == ["dlq"]


def test_python_dash_m() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "framework", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.startswith("kanin ")


def test_readme_example_runs() -> None:
    """The Python example in the README defines a working consumer."""
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    assert code is not None
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(code.group(1), "README.md", "exec"), namespace)
    consumer = namespace["ReserveInventory"]
    assert consumer.event_classes() == {"order.placed": namespace["OrderPlaced"]}  # type: ignore[attr-defined]
    assert namespace["OrderPlaced"].event_exchange == "shop.events"  # type: ignore[attr-defined]


TICKS = """
import asyncio, os, signal
from framework import Consumer, Context, Event, Publisher, Settings
from framework.errors import KaninError


class Tick(Event, type="tick", version=1):
    n: int


async def send_ticks() -> None:
    async with Publisher(Settings()) as publisher:  # KANIN_BROKER_URL: the same memory://
        while True:
            try:
                await publisher.publish(Tick(n=0), exchange="", routing_key="ticks")
                break
            except KaninError:  # the worker has not declared its queue yet
                await asyncio.sleep(0.01)
        for n in (1, 2):
            await publisher.publish(Tick(n=n), exchange="", routing_key="ticks")


class Ticks(Consumer):
    queue = "ticks"

    async def on_startup(self) -> None:
        self.seen = []
        self.sender = asyncio.create_task(send_ticks())

    async def handle(self, event: Tick, ctx: Context) -> None:
        print("tick", event.n, flush=True)
        self.seen.append(event.n)
        if len(self.seen) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
"""


def test_run_on_the_embedded_broker(tmp_path: Path) -> None:
    (tmp_path / "ticks.py").write_text(TICKS)
    result = subprocess.run(
        [KANIN, "run", "ticks", "--broker", "memory://"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith(("KANIN_", "OTEL_"))}
        | {"KANIN_BROKER_URL": "memory://"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["tick 0", "tick 1", "tick 2", ""]
    assert "ticks.Ticks on ticks: received 3, acked 3, handled 3" in result.stderr


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("topology plan", ["topology", "plan", "config/topology.yaml"]),
        ("topology apply", ["topology", "apply", "config/topology.yaml"]),
        ("publish", ["publish", "", "q", "--data", "{}"]),
        ("replay", ["replay", "shop.events.log", "workers.history"]),
        ("outbox relay", ["outbox", "relay", "--url", "postgresql://db/x"]),
    ],
)
def test_server_commands_refuse_the_embedded_broker(command: str, args: list[str]) -> None:
    result = kanin(*args, "--broker", "memory://")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        f"error: kanin {command} needs a RabbitMQ broker (amqp:// or amqps://): memory:// is "
        "the embedded broker of one process (kanin run, kanin demo)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "10", "--to", "5"], "--to 5 comes before --from 10"),
        (["--from", "last"], "--from 'last': write first, an offset or an ISO 8601 time"),
        (["--to", "next"], "--to 'next': write an offset or an ISO 8601 time"),
        (["--to", "soon"], "--to 'soon': write an offset or an ISO 8601 time"),
    ],
)
def test_replay_refuses_a_range_it_cannot_read(args: list[str], message: str) -> None:
    result = kanin("replay", "shop.events.log", "workers.history", *args)
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n")


def test_replay_needs_a_projection_of_the_stream() -> None:
    result = kanin("replay", "shop.events.log", "workers.inventory")
    assert (result.returncode, result.stderr) == (
        2, "error: no projection in workers.inventory reads 'shop.events.log'\n"
    )  # fmt: skip

"""Every console command and Python snippet of README.md and docs/*.md, run.

Each page gets a vhost of its own on the real RabbitMQ and a schema of its own in
PostgreSQL (``DATABASE_URL`` and ``KANIN_CHECKPOINT_URL`` point there; both deleted
afterwards), and a working directory with the repository's ``config/`` and ``workers/``
in it. Blocks run in page
order: ``console`` commands in a shell (``kanin run`` ones in the background until the
block ends, then SIGTERM), ``python`` blocks in one namespace per page (top-level
``await`` allowed), ``yaml`` and ``json`` blocks parsed. Output shown after a command
must match what it prints (``...`` stands for any lines, ``…`` for any text in a line).

An HTML comment right above a block steers it, e.g. ``<!-- snippet: file order.json -->``
(write the block to that file), ``<!-- snippet: exit 2 -->`` (of the last command),
``<!-- snippet: before kanin topology apply config/topology.yaml -->`` (a hidden step first),
``<!-- snippet: pytest -->`` (run the block as a test file with pytest, no configuration),
``<!-- snippet: output any -->``, ``<!-- snippet: skip <why> -->`` (a reason is required).
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import shlex
import signal
import string
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import AMQP_URL, BrokerAdmin, schema_url

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
_BLOCK = re.compile(r"((?:^<!-- snippet: .*? -->\n)*)^```(\w*)\n(.*?)^```", re.M | re.S)
_DIRECTIVE = re.compile(r"<!-- snippet: (\w+) ?(.*?) -->")


@dataclass
class Block:
    page: str
    line: int
    lang: str
    text: str
    directives: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        directives = dict(_DIRECTIVE.findall(match.group(1)))
        line = text[: match.start(2)].count("\n") + 1
        found.append(Block(page.name, line, match.group(2), match.group(3), directives))
    return found


def test_every_block_is_run_or_says_why_not() -> None:
    for page in PAGES:
        for block in blocks(page):
            if "skip" in block.directives:
                assert block.directives["skip"].strip(), f"{block}: skip needs a reason"
            unknown = set(block.directives) - {"skip", "exit", "output", "file", "before", "pytest"}
            assert not unknown, f"{block}: unknown directives {unknown}"


class Page:
    """The environment one page's blocks run in."""

    def __init__(self, vhost: str, work: Path, schema: str) -> None:
        self.vhost = vhost
        self.work = work
        self.url = AMQP_URL.rstrip("/") + "/" + vhost
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("KANIN_", "OTEL_"))}
        self.env.update(
            KANIN_BROKER_URL=self.url,
            PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
            PYTHONPATH=str(ROOT),
            KANIN_CHECKPOINT_URL=schema_url(schema),
            DATABASE_URL=schema_url(schema),
        )
        # the page's Python blocks share a module, as a reader's file would be one
        self.module = types.ModuleType(f"snippets_{vhost.replace('-', '_')}")
        sys.modules[self.module.__name__] = self.module

    def shown(self, output: str) -> str:
        """Output as the docs show it: this page's vhost read as the default one."""
        return output.replace(
            self.url.replace("guest:guest@", "guest@"), "amqp://guest@127.0.0.1:5672/"
        )

    def daemon(self, command: str, log: Path) -> subprocess.Popen[str]:
        """``[NAME=value ...] kanin run ...`` without a shell between, so SIGTERM reaches it."""
        words = shlex.split(command)
        env = dict(self.env)
        while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = string.Template(value).safe_substitute(env)  # $VAR as a shell would
        with log.open("w") as out:
            return subprocess.Popen(
                words,
                cwd=self.work,
                env=env,
                text=True,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def shell(self, command: str, **options: Any) -> subprocess.Popen[str]:
        cwd = ROOT if command.startswith("make ") else self.work
        return subprocess.Popen(
            ["bash", "-c", command],
            cwd=cwd,
            env=self.env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **options,
        )


def commands(text: str) -> list[tuple[str, list[str]]]:
    """Each ``$ command`` of a console block with the output lines shown after it."""
    out: list[tuple[str, list[str]]] = []
    going_on = False  # the previous command line ended with a backslash
    for line in text.splitlines():
        if going_on:
            out[-1] = (out[-1][0][:-1] + line.strip(), [])
        elif line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
        going_on = bool(out) and out[-1][0].endswith("\\") and not out[-1][1]
    return out


def matches(shown: list[str], got: list[str]) -> bool:
    """``...`` lines match any lines; ``…`` in a line matches any text."""
    if not shown:
        return not got
    if shown[0].strip() == "...":
        return any(matches(shown[1:], got[i:]) for i in range(len(got) + 1))
    if not got:
        return False
    pattern = ".*".join(re.escape(part) for part in shown[0].split("…"))
    return re.fullmatch(pattern, got[0].rstrip()) is not None and matches(shown[1:], got[1:])


def run_before(page: Page, block: Block) -> None:
    if "before" in block.directives:
        before = page.shell(block.directives["before"])
        output, _ = before.communicate(timeout=120)
        assert before.returncode == 0, f"{block}: before: {output}"


def run_console(page: Page, block: Block) -> None:
    daemons: list[tuple[str, subprocess.Popen[str], Path]] = []
    steps = commands(block.text)
    try:
        for index, (line, shown) in enumerate(steps):
            command = re.split(r"\s+# ", line)[0].strip()  # without the docs' comment
            if command.startswith("kanin run") or " kanin run " in f" {command} ":
                log = page.work / f"daemon-{block.line}-{index}.log"
                process = page.daemon(command, log)
                daemons.append((command, process, log))
                wait_started(block, command, process, log)
                continue
            process = page.shell(command)
            output, _ = process.communicate(timeout=300)
            last = index == len(steps) - 1
            want = int(block.directives.get("exit", "0")) if last else 0
            said = f"{block}: `{command}` exit {process.returncode}:\n{output}"
            assert process.returncode == want and "Traceback" not in output, said
            got = [text for text in page.shown(output).splitlines() if text.strip()]
            if shown and block.directives.get("output") != "any":
                assert matches(shown, got), f"{block}: `{command}` printed:\n" + "\n".join(got)
    finally:
        for command, process, log in daemons:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
            text = log.read_text()
            said = f"{block}: `{command}` exit {process.returncode}:\n{text}"
            assert process.returncode == 0 and "Traceback" not in text, said
            assert not re.search(r"dead_lettered [1-9]", text), f"{block}: a message failed\n{text}"


def wait_started(block: Block, command: str, process: subprocess.Popen[str], log: Path) -> None:
    """Until the worker logs a consumer started (then messages published wait for it)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if " started on " in text or re.search(r"projection \S+ reading ", text):
            return
        if process.poll() is not None:
            raise AssertionError(f"{block}: `{command}` ended, exit {process.returncode}:\n{text}")
        time.sleep(0.1)
    raise AssertionError(f"{block}: `{command}` did not start:\n{log.read_text()}")


def run_python(page: Page, block: Block) -> None:
    if "pytest" in block.directives:
        test = page.work / f"test_snippet_{block.line}.py"
        test.write_text(block.text)
        process = page.shell(f"{sys.executable} -m pytest -q -p no:cacheprovider {test.name}")
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, f"{block}: pytest says:\n{output}"
        return
    code = compile(block.text, str(block), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, page.module.__dict__)
    if asyncio.iscoroutine(result):
        asyncio.run(asyncio.wait_for(result, 120))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_page_runs(
    page: Path,
    admin: BrokerAdmin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pg_schema: str,
) -> None:
    vhost = f"kt-docs-{os.urandom(4).hex()}"
    admin.request("PUT", f"vhosts/{vhost}", {})
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    admin.request("PUT", f"permissions/{vhost}/guest", everything)
    for name in ("config", "workers"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = Page(vhost, tmp_path, pg_schema)
    try:
        for key, value in env.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.chdir(tmp_path)
        for block in blocks(page):
            if "skip" in block.directives:
                continue
            if "file" in block.directives:
                (tmp_path / block.directives["file"]).write_text(block.text)
            run_before(env, block)
            if block.lang == "console":
                run_console(env, block)
            elif block.lang == "python":
                run_python(env, block)
            elif block.lang == "yaml":
                yaml.safe_load(block.text)
            elif block.lang == "json":
                json.loads(block.text)
    finally:
        sys.modules.pop(env.module.__name__, None)
        admin.request("DELETE", f"vhosts/{vhost}")

"""`make demo` and `kanin demo`: the flows, their outcomes and their traces, as printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).parent / "kanin")


def clean_env() -> dict[str, str]:
    """The environment without make's, kanin's, the shop's or OpenTelemetry's settings."""
    drop = ("MAKE", "MFLAGS", "KANIN_", "SHOP_", "OTEL_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def block(output: str, flow: str) -> list[str]:
    """The waterfall lines printed for ``flow``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{flow}  trace "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return lines[start:end]


def column_of(line: str, word: str) -> int:
    return line.index(word)


def test_make_demo_shows_the_flows_their_outcomes_and_their_traces() -> None:
    result = run(["make", "-s", "demo"], ROOT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # the steps, as they happened, on the broker's clock
    for flow in ("order-1", "flaky-2", "fail-3"):
        assert re.search(rf"s  {flow} +orders +published +order\.placed → shop\.events", out)
    assert re.search(r"flaky-2 +payments +retry \+2s +inventory\.reserved .*attempt 1", out)
    assert re.search(r"2\.0\d\ds  flaky-2 +payments +ok +inventory\.reserved .*attempt 2", out)
    assert re.search(r"flaky-2 +notifications +ok +shipment\.scheduled", out)
    assert len(re.findall(r"fail-3 +payments +retry", out)) == 5
    assert re.search(
        r"62\.0\d\ds  fail-3 +payments +dead-letter .*attempt 6: "
        r"PaymentProviderTimeout → payments\.charge\.dlq",
        out,
    )
    assert "fail-3         shipping" not in out
    assert out.rstrip().endswith(
        "3 flows: 14 messages handled, 6 retried, 1 dead-lettered "
        "(parked in payments.charge.dlq: 1)"
    )
    # one trace per order, every span in it, as a tree
    ok = block(out, "order-1")
    assert "10 spans, 5 services: orders, inventory, notifications, payments, shipping" in ok[0]
    assert "send shop.events:order.placed" in ok[2] and "orders" in ok[2]
    assert len(ok) == 2 + 10
    flaky = block(out, "flaky-2")
    attempts = [line for line in flaky if " payments " in line and "process" in line]
    assert len(attempts) == 2
    assert re.search(r" 1  retry \+2s .*├─ process shop\.events:inventory\.reserved", attempts[0])
    assert re.search(r" 2  ok .*└─ process amq\.default:payments\.charge", attempts[1])
    # both attempts are children of inventory's one send: same depth in the tree
    assert column_of(attempts[0], "process") == column_of(attempts[1], "process")
    send = next(line for line in flaky if "send shop.events:inventory.reserved" in line)
    assert column_of(attempts[0], "process") == column_of(send, "send") + 3
    failed = block(out, "fail-3")
    outcomes = [re.search(r"payments +(\d) +(\S+)", line) for line in failed if "payments" in line]
    assert [(m.group(1), m.group(2)) for m in outcomes if m] == [
        ("1", "retry"), ("2", "retry"), ("3", "retry"), ("4", "retry"), ("5", "retry"),
        ("6", "dead-letter"),
    ]  # fmt: skip


GREETER = """
from framework import Consumer, Context, Event, RetryPolicy


class Greet(Event, type="greet", version=1):
    name: str


class Greeted(Event, type="greeted", version=1):
    name: str


class SayHello(Consumer):
    queue = "greet"
    retry = RetryPolicy(attempts=2, backoff="fixed", initial=30.0, max=30.0)

    async def handle(self, event: Greet, ctx: Context) -> None:
        if event.name == "shy" and ctx.attempt == 1:
            raise RuntimeError("not yet")
        await ctx.publish(Greeted(name=event.name))


class Log(Consumer):
    queue = "greeted"

    async def handle(self, event: Greeted, ctx: Context) -> None:
        pass


def flows():
    return {"ann": Greet(name="ann"), "shy": Greet(name="shy")}


def not_flows():
    return [Greet(name="ann")]
"""


def test_kanin_demo_runs_any_consumers_with_any_seed(tmp_path: Path) -> None:
    (tmp_path / "greeter.py").write_text(GREETER)
    result = run([KANIN, "demo", "greeter", "--seed", "greeter:flows"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "greeter on the embedded broker; greeter publishes 2 events (ann, shy)" in out
    assert re.search(r"30\.0\d\ds  shy +greeter +ok +greet from greet, attempt 2", out)
    assert "2 flows: 4 messages handled, 1 retried, 0 dead-lettered (parked in none)" in out
    assert "shy  trace " in out and "ann  trace " in out


def test_kanin_demo_says_what_is_wrong_with_its_seed(tmp_path: Path) -> None:
    (tmp_path / "greeter.py").write_text(GREETER)
    for seed, message in [
        ("greeter:nothing", "'greeter:nothing': module 'greeter' has no 'nothing'"),
        ("greeter", "'greeter': expected module:name"),
        ("greeter:not_flows", "greeter:not_flows must return a mapping of flow name to Event"),
    ]:
        result = run([KANIN, "demo", "greeter", "--seed", seed], tmp_path)
        assert result.returncode == 2, (seed, result.stdout, result.stderr)
        assert result.stderr.strip() == f"error: {message}"
    elsewhere = run([KANIN, "demo"], tmp_path)  # no example shop here
    assert elsewhere.returncode == 2
    assert elsewhere.stderr.strip() == (
        "error: cannot import 'workers.inventory': no module named 'workers': "
        "without targets, kanin demo runs the example shop from the repository root"
    )

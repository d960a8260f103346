"""Topology both ways (plan, apply --prune, export) and `kanin status` on the real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.conftest import AMQP_URL, BrokerAdmin
from tests.integration.worker_kit import amqp

pytestmark = pytest.mark.integration

KANIN = str(Path(sys.executable).parent / "kanin")
ROOT = Path(__file__).resolve().parents[2]


def kanin(*args: str, url: str = AMQP_URL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KANIN, *args], env={**os.environ, "KANIN_BROKER_URL": url}, capture_output=True,
        text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip


async def until(check: Callable[[], bool], within: float = 30.0, what: str = "") -> None:
    """The management API lists new objects and counts a few seconds late."""
    for _ in range(int(within / 0.25)):
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"not within {within}s: {what}")


async def test_plan_reports_stale_objects_and_apply_prune_removes_them(
    prefix: str, admin: BrokerAdmin, write: Callable[..., Path]
) -> None:
    file = write(
        f"""
owns: [{prefix}.old.]
exchanges:
  - name: {prefix}.events
    type: topic
queues:
  - name: {prefix}.orders
    retry: {{attempts: 3, initial: 1s}}
bindings:
  - exchange: {prefix}.events
    queue: {prefix}.orders
    routing_key: order.placed
"""
    )
    applied = kanin("topology", "apply", str(file))
    assert applied.returncode == 0, applied.stderr
    async with amqp() as channel:
        events = await channel.get_exchange(f"{prefix}.events")
        orders = await channel.get_queue(f"{prefix}.orders")
        await orders.bind(events, "by.hand")  # added by hand: stale
        await channel.declare_queue(f"{prefix}.orders.retry.3", durable=True)  # was attempts 4
        old = await channel.declare_queue(f"{prefix}.old.thing", durable=True)
        await channel.default_exchange.publish(aio_pika.Message(b"kept"), old.name)
        await channel.declare_exchange(f"{prefix}.old.x", aio_pika.ExchangeType.FANOUT)
        foreign = await channel.declare_queue(f"{prefix}.foreign", auto_delete=True)
        await foreign.bind(events, "#")  # another service's subscription: not stale
    await until(
        lambda: (
            f"{prefix}.old.x" in admin.exchanges(prefix)
            and len(admin.queues(prefix)) == 7
            and len(admin.bindings(prefix)) == 3
        ),
        what="the hand-made objects listed",
    )

    planned = kanin("topology", "plan", str(file), "--json")
    assert planned.returncode == 0, planned.stderr
    result = json.loads(planned.stdout)
    assert sorted(s["object"] for s in result["stale"]) == sorted(
        [
            f"binding {prefix}.events -> queue {prefix}.orders [by.hand]",
            f"queue {prefix}.orders.retry.3 (classic)",
            f"queue {prefix}.old.thing (classic)",
            f"exchange {prefix}.old.x (fanout)",
        ]
    )
    assert result["counts"] == {"create": 0, "unchanged": 6, "differ": 0, "stale": 4}
    text = kanin("topology", "plan", str(file))
    assert f"- binding {prefix}.events -> queue {prefix}.orders [by.hand]" in text.stdout

    pruned = kanin("topology", "apply", str(file), "--prune")
    assert pruned.returncode == 0, pruned.stderr
    assert f"removed  binding {prefix}.events -> queue {prefix}.orders [by.hand]" in pruned.stdout
    assert f"kept     queue {prefix}.old.thing (classic): it holds messages" in pruned.stdout
    assert pruned.stdout.rstrip().endswith("3 stale removed")
    await until(
        lambda: set(admin.queues(prefix))
        == {f"{prefix}.orders", f"{prefix}.orders.dlq", f"{prefix}.orders.retry.1",
            f"{prefix}.orders.retry.2", f"{prefix}.old.thing", f"{prefix}.foreign"},
        what="the stale queue removed, the one with messages kept",
    )  # fmt: skip
    assert {b[3] for b in admin.bindings(prefix)} == {"order.placed", "#"}
    assert f"{prefix}.old.x" not in admin.exchanges(prefix)

    forced = kanin("topology", "apply", str(file), "--prune", "--force")
    assert forced.returncode == 0, forced.stderr
    assert f"removed  queue {prefix}.old.thing (classic)" in forced.stdout
    refused = kanin("topology", "apply", str(file), "--force")
    assert (refused.returncode, refused.stderr) == (
        2,
        "error: --force goes with --prune: it removes stale queues with messages\n",
    )


def test_export_of_the_shops_live_topology_plans_unchanged(
    vhost: str, admin: BrokerAdmin, tmp_path: Path
) -> None:
    url = AMQP_URL.rstrip("/") + f"/{vhost}"
    applied = kanin("topology", "apply", "config/topology.yaml", url=url)
    assert applied.returncode == 0, applied.stderr
    asyncio.run(
        until(
            lambda: (
                len(admin.request("GET", f"queues/{vhost}") or []) == 27
                and len([b for b in admin.request("GET", f"bindings/{vhost}") or [] if b["source"]])
                == 9
            ),
            what="the shop's 27 queues and 9 bindings listed",
        )
    )
    out = tmp_path / "exported.yaml"
    exported = kanin("topology", "export", "--out", str(out), url=url)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == f"wrote {out}: 2 exchanges, 6 queues, 9 bindings\n"
    assert exported.stderr == ""  # nothing left out
    assert kanin("topology", "validate", str(out)).returncode == 0
    planned = kanin("topology", "plan", str(out), url=url)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert planned.stdout.splitlines()[-1] == (
        f"plan for {url.replace('guest:guest@', 'guest@')}: "
        "0 to create, 38 unchanged, 0 differ, 0 stale"
    )


async def test_status_exits_1_for_parked_messages_or_a_queue_nobody_consumes(
    prefix: str, write: Callable[..., Path]
) -> None:
    file = write(f"queues:\n  - name: {prefix}.orders\n    retry: {{attempts: 2, initial: 1s}}\n")
    assert kanin("topology", "apply", str(file)).returncode == 0

    def status() -> tuple[int, dict[str, Any]]:
        result = kanin("status", "--topology", str(file), "--json")
        return result.returncode, json.loads(result.stdout)

    code, report = status()
    assert code == 1 and report["problems"] == [f"{prefix}.orders has no consumer"]
    assert report["queues"][0]["dead"] == 0 and report["queues"][0]["waiting"] == 0
    async with amqp() as channel:
        orders = await channel.get_queue(f"{prefix}.orders")

        async def ack(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()

        await orders.consume(ack)
        await until(lambda: status()[0] == 0, what="status 0 with a consumer")
        await channel.default_exchange.publish(aio_pika.Message(b"x"), f"{prefix}.orders.dlq")
        await until(
            lambda: status()[1]["problems"] == [f"{prefix}.orders.dlq holds 1 message"],
            what="the parked message reported",
        )
        table = kanin("status", "--topology", str(file))
        assert table.returncode == 1
        assert table.stdout.splitlines()[0].split() == [
            "queue", "ready", "unacked", "consumers", "in/s", "out/s", "waiting", "dlq"
        ]  # fmt: skip
        assert table.stdout.splitlines()[-1] == f"! {prefix}.orders.dlq holds 1 message"

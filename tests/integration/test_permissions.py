"""Least privilege: the shop on a vhost of its own, with two users that have exactly the
permissions ``kanin topology permissions`` prints: the deploy user applies the topology,
the runtime user runs the workers with --no-declare and publishes (a retry and a DLQ move
included), and cannot declare or delete anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq.exceptions
import pytest

from tests.conftest import BrokerAdmin, schema_url
from tests.integration.worker_kit import stop_process

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).with_name("kanin"))
TOPOLOGY = str(ROOT / "config" / "topology.yaml")


@pytest.fixture
def vhost(admin: BrokerAdmin) -> Iterator[str]:
    name = f"kt-perm-{os.urandom(4).hex()}"
    admin.request("PUT", f"vhosts/{name}", {})
    try:
        yield name
    finally:
        for user in admin.request("GET", "users"):
            if user["name"].startswith(name):
                admin.request("DELETE", f"users/{quote(user['name'], safe='')}")
        admin.request("DELETE", f"vhosts/{name}")


def kanin(*args: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KANIN, *args], env=environment(url, **env), cwd=ROOT, capture_output=True,
        text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def environment(url: str, **env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KANIN_", "OTEL_", "SHOP_"))}
    return {**clean, "KANIN_BROKER_URL": url, "PYTHONPATH": str(ROOT), **env}


def make_user(admin: BrokerAdmin, vhost: str, grant: dict[str, Any]) -> str:
    """The user ``grant`` names, with a password of its own and exactly that grant; its URL."""
    user, password = grant["user"], os.urandom(8).hex()
    admin.request("PUT", f"users/{quote(user, safe='')}",
                  {"password": password, "tags": ",".join(grant["tags"])})  # fmt: skip
    permissions = {key: grant[key] for key in ("configure", "write", "read")}
    admin.request("PUT", f"permissions/{vhost}/{quote(user, safe='')}", permissions)
    return f"amqp://{user}:{password}@127.0.0.1:5672/{vhost}"


def queue(admin: BrokerAdmin, vhost: str, name: str) -> dict[str, Any]:
    return admin.request("GET", f"queues/{vhost}/{quote(name, safe='')}") or {}


def order(order_id: str) -> str:
    item = {"sku": "sku-1", "quantity": 1, "price_cents": 500}
    return json.dumps({"order_id": order_id, "customer_email": "a@example.com", "items": [item]})


async def test_the_printed_permissions_run_the_shop_and_nothing_more(
    admin: BrokerAdmin, vhost: str, pg_schema: str
) -> None:
    printed = kanin(
        "topology", "permissions", TOPOLOGY, "workers", "--json",
        "--deploy-user", f"{vhost}-deploy", "--runtime-user", f"{vhost}-runtime",
        url=f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
    )  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    grants = json.loads(printed.stdout)
    assert grants["runtime"]["configure"] == "^$"
    assert grants["runtime"]["vhost"] == vhost
    deploy = make_user(admin, vhost, grants["deploy"])
    runtime = make_user(admin, vhost, grants["runtime"])

    applied = kanin("topology", "apply", TOPOLOGY, url=deploy)
    assert applied.returncode == 0, applied.stderr + applied.stdout
    refused = kanin("topology", "apply", TOPOLOGY, url=runtime)  # it exists: still a declare
    assert refused.returncode == 1 and "ACCESS_REFUSED" in refused.stderr, refused.stderr

    checkpoints = {"KANIN_CHECKPOINT_URL": schema_url(pg_schema)}  # the shop's read model
    worker = subprocess.Popen(  # noqa: ASYNC220 - it runs beside the test
        [KANIN, "run", "workers", "--no-declare", "--topology", TOPOLOGY],
        env=environment(runtime, **checkpoints), cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for order_id in ("flaky-1", "declined-1"):  # a retry, then a DLQ move
            sent = kanin("publish", "shop.events", "order.placed", "-d", order(order_id),
                         "--type", "order.placed", url=runtime)  # fmt: skip
            assert sent.returncode == 0, sent.stderr
        garbage = kanin("publish", "", "inventory.reserve", "-d", "[1, 2]",
                        "--type", "order.placed", url=runtime)  # fmt: skip
        assert garbage.returncode == 0, garbage.stderr  # invalid: parked by the worker
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dead = queue(admin, vhost, "payments.charge.dlq").get("messages", 0)
            bad = queue(admin, vhost, "inventory.reserve.dlq").get("messages", 0)
            shipped = queue(admin, vhost, "notifications.email").get("message_stats", {})
            if dead == 1 and bad == 1 and shipped.get("ack", 0) >= 5:
                break  # placed x2, failed, captured, scheduled: every email handled
            assert worker.poll() is None, worker.stdout.read() if worker.stdout else ""
            await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"the flow did not finish: dlq {dead}, bad {bad}, {shipped}")
        retried = queue(admin, vhost, "payments.charge.retry.1").get("message_stats", {})
        assert retried.get("publish", 0) >= 1, retried  # flaky-1 waited there once
    finally:
        output = stop_process(worker)
    assert worker.returncode == 0, output
    assert "ACCESS_REFUSED" not in output, output

    connection = await aio_pika.connect(runtime)
    async with connection:
        for attempt in (
            lambda ch: ch.declare_queue("payments.charge.extra", durable=True),
            lambda ch: ch.declare_exchange("shop.events.extra", "topic"),
            lambda ch: ch.queue_delete("payments.charge"),
            lambda ch: ch.exchange_delete("shop.events"),
        ):
            channel = await connection.channel()
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await attempt(channel)
    assert queue(admin, vhost, "payments.charge"), "the runtime user deleted a queue"

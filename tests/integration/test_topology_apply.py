"""`kanin topology apply` against the real RabbitMQ, read back through the management API."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import aio_pika
import pytest
from typer.testing import CliRunner

from framework import Consumer, Context, Event, RetryPolicy, TopologyConflict, Worker
from framework.cli import app
from tests.conftest import AMQP_URL, BrokerAdmin
from tests.integration.worker_kit import settings

pytestmark = pytest.mark.integration

TOPOLOGY = """
exchanges:
  - name: ${P}.events
    type: topic
    alternate_exchange: ${P}.unrouted
  - name: ${P}.unrouted
    type: fanout
    internal: true
  - name: ${P}.match
    type: headers
  - name: ${P}.audit
    type: fanout
    durable: false
    auto_delete: true
queues:
  - name: ${P}.work
    type: quorum
    delivery_limit: 5
    single_active_consumer: true
    retry: {attempts: 3, backoff: exponential, initial: 500ms, multiplier: 4}
  - name: ${P}.classic
    message_ttl: 60s
    expires: 1h
    max_length: 10
    overflow: reject-publish
    max_priority: 5
    arguments: {x-queue-mode: lazy}
  - name: ${P}.audit
    dead_letter: false
  - name: ${P}.unrouted
bindings:
  - exchange: ${P}.events
    queue: ${P}.work
    routing_keys: [order.*, payment.#]
  - exchange: ${P}.match
    queue: ${P}.classic
    headers: {region: eu, tier: 1}
    match: any
  - exchange: ${P}.events
    to_exchange: ${P}.audit
    routing_key: "order.#"
  - exchange: ${P}.audit
    queue: ${P}.audit
  - exchange: ${P}.unrouted
    queue: ${P}.unrouted
"""


def run(*args: str, prefix: str, broker_url: str | None = None) -> tuple[int, str, str]:
    env = {"P": prefix, "KANIN_BROKER_URL": broker_url or AMQP_URL}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def topology(write, prefix: str) -> Path:  # type: ignore[no-untyped-def]
    return write(TOPOLOGY)


def test_apply_declares_exactly_what_the_file_says(
    topology: Path, prefix: str, admin: BrokerAdmin
) -> None:
    code, out, err = run("topology", "apply", str(topology), prefix=prefix)
    assert code == 0, err
    p = prefix

    exchanges = admin.exchanges(p)
    assert set(exchanges) == {f"{p}.events", f"{p}.unrouted", f"{p}.match", f"{p}.audit"}
    events = exchanges[f"{p}.events"]
    assert (events["type"], events["durable"], events["internal"]) == ("topic", True, False)
    assert events["arguments"] == {"alternate-exchange": f"{p}.unrouted"}
    assert exchanges[f"{p}.unrouted"]["internal"] is True
    assert exchanges[f"{p}.match"]["type"] == "headers"
    audit = exchanges[f"{p}.audit"]
    assert (audit["durable"], audit["auto_delete"]) == (False, True)

    queues = admin.queues(p)
    assert set(queues) == {
        f"{p}.work",
        f"{p}.work.retry.1",
        f"{p}.work.retry.2",
        f"{p}.work.dlq",
        f"{p}.classic",
        f"{p}.classic.dlq",
        f"{p}.audit",
        f"{p}.unrouted",
        f"{p}.unrouted.dlq",
    }
    assert queues[f"{p}.work"]["arguments"] == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 5,
        "x-single-active-consumer": True,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{p}.work.dlq",
    }
    for n, ttl in [(1, 500), (2, 2000)]:
        assert queues[f"{p}.work.retry.{n}"]["arguments"] == {
            "x-queue-type": "quorum",
            "x-message-ttl": ttl,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": f"{p}.work",
        }
    assert queues[f"{p}.work.dlq"]["arguments"] == {"x-queue-type": "quorum"}
    assert queues[f"{p}.classic"]["arguments"] == {
        "x-queue-type": "classic",
        "x-message-ttl": 60_000,
        "x-expires": 3_600_000,
        "x-max-length": 10,
        "x-overflow": "reject-publish",
        "x-max-priority": 5,
        "x-queue-mode": "lazy",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": f"{p}.classic.dlq",
    }
    assert queues[f"{p}.audit"]["arguments"] == {"x-queue-type": "classic"}
    assert all(q["durable"] for q in queues.values())

    def b(src: str, dst: str, kind: str = "queue", key: str = "", **args: object) -> tuple:
        return (f"{p}.{src}", f"{p}.{dst}", kind, key, json.dumps(args, sort_keys=True))

    assert admin.bindings(p) == {
        b("events", "work", key="order.*"),
        b("events", "work", key="payment.#"),
        b("match", "classic", **{"x-match": "any", "region": "eu", "tier": 1}),
        b("events", "audit", "exchange", "order.#"),
        b("audit", "audit"),
        b("unrouted", "unrouted"),
    }
    assert f"created  queue {p}.work.retry.1 (quorum, wait 500 ms, then back to {p}.work)" in out
    assert out.strip().endswith("19 created, 0 already there")


def test_reapplying_changes_nothing(topology: Path, prefix: str, admin: BrokerAdmin) -> None:
    assert run("topology", "apply", str(topology), prefix=prefix)[0] == 0
    before = (admin.exchanges(prefix), admin.queues(prefix), admin.bindings(prefix))
    code, out, err = run("topology", "apply", str(topology), prefix=prefix)
    assert code == 0, err
    assert out.strip().endswith("0 created, 19 already there")
    after = (admin.exchanges(prefix), admin.queues(prefix), admin.bindings(prefix))

    def shape(state: tuple) -> tuple:
        exchanges, queues, bindings = state
        keep = ("type", "durable", "auto_delete", "arguments")
        return (
            {n: {k: x.get(k) for k in keep} for n, x in exchanges.items()},
            {n: {k: q.get(k) for k in keep} for n, q in queues.items()},
            bindings,
        )

    assert shape(after) == shape(before)
    code, out, _ = run("topology", "plan", str(topology), prefix=prefix)
    assert code == 0
    assert "0 to create, 19 unchanged, 0 differ" in out


def test_plan_shows_what_apply_would_create(topology: Path, prefix: str) -> None:
    code, out, _ = run("topology", "plan", str(topology), prefix=prefix)
    assert code == 0
    assert f"+ queue {prefix}.work.dlq (quorum, dead letters)" in out
    assert "19 to create, 0 unchanged, 0 differ" in out


async def declare(name: str, **arguments: object) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=True, arguments=arguments or None)


def test_conflicting_arguments_are_named_with_both_values(
    topology: Path, prefix: str, admin: BrokerAdmin
) -> None:
    asyncio.run(declare(f"{prefix}.classic", **{"x-message-ttl": 5000}))
    started = time.monotonic()
    code, out, err = run("topology", "apply", str(topology), prefix=prefix)
    assert code == 1
    assert time.monotonic() - started < 30  # reported once, not retried in a loop
    assert (
        f"queue '{prefix}.classic': x-message-ttl is 5000 on the broker but 60000 in {topology}"
        in err
    )
    assert f"queue '{prefix}.classic': x-max-length is <not set> on the broker but 10" in err
    # the broker's queue is left as it was
    assert admin.queues(prefix)[f"{prefix}.classic"]["arguments"] == {"x-message-ttl": 5000}
    # the rest of the file was still applied, and plan reports the same conflict
    assert f"{prefix}.work.retry.2" in admin.queues(prefix)
    code, out, _ = run("topology", "plan", str(topology), prefix=prefix)
    assert code == 1
    assert f"! queue {prefix}.classic (classic)" in out
    assert "x-message-ttl is 5000 on the broker but 60000" in out


class Ping(Event, type="test.ping", version=1):
    n: int


async def test_a_conflict_from_a_consumer_class_names_the_class_attribute(prefix: str) -> None:
    """The retry policy came from the class, not from a file: the error says so."""
    await declare(f"{prefix}.work.retry.1", **{"x-message-ttl": 5000})

    class Work(Consumer):
        queue = f"{prefix}.work"
        retry = RetryPolicy(attempts=2, initial=1.0)

        async def handle(self, event: Ping, ctx: Context) -> None: ...

    worker = Worker([Work], settings())
    with pytest.raises(TopologyConflict) as conflict:
        await worker.start()
    await worker.shutdown()
    assert (
        f"queue '{prefix}.work.retry.1': x-message-ttl is 5000 on the broker but 1000 in "
        f"{Work.consumer_name()}.retry"
    ) in str(conflict.value)


def test_exchange_type_conflict(write, prefix: str) -> None:  # type: ignore[no-untyped-def]
    first = write("exchanges:\n  - {name: '${P}.x', type: direct}\n", "a.yaml")
    second = write("exchanges:\n  - {name: '${P}.x', type: topic}\n", "b.yaml")
    assert run("topology", "apply", str(first), prefix=prefix)[0] == 0
    code, _, err = run("topology", "apply", str(second), prefix=prefix)
    assert code == 1
    assert f"exchange '{prefix}.x': type is 'direct' on the broker but 'topic' in {second}" in err


def test_unreachable_broker_is_exit_1_without_password(topology: Path, prefix: str) -> None:
    url = "amqp://guest:TopSecret99@127.0.0.1:1/"
    code, out, err = run("topology", "apply", str(topology), prefix=prefix, broker_url=url)
    assert code == 1
    assert "cannot connect to amqp://guest@127.0.0.1:1/" in err
    assert "TopSecret99" not in out + err


async def wait_for_message(
    channel: aio_pika.abc.AbstractChannel, queue: str, within: float, no_ack: bool = True
) -> aio_pika.abc.AbstractIncomingMessage:
    q = await channel.get_queue(queue, ensure=False)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        message = await q.get(fail=False, no_ack=no_ack)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError(f"no message arrived in {queue} within {within}s")


RECOVERY = """
queues:
  - name: ${P}.work
    type: ${TYPE}
    retry: {attempts: 2, initial: 400ms}
"""


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_wait_queue_sends_message_back_to_work_queue_after_its_ttl(
    write, prefix: str, queue_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TYPE", queue_type)
    path = write(RECOVERY)
    code, _, err = await asyncio.to_thread(run, "topology", "apply", str(path), prefix=prefix)
    assert code == 0, err
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        body = b'{"order_id": "o-1"}'
        sent = time.monotonic()
        await channel.default_exchange.publish(
            aio_pika.Message(body, headers={"x-attempt": 2}), routing_key=f"{prefix}.work.retry.1"
        )
        message = await wait_for_message(channel, f"{prefix}.work", within=15)
        waited = time.monotonic() - sent
    assert waited >= 0.4
    assert message.body == body
    assert message.headers["x-attempt"] == 2
    death = message.headers["x-death"][0]
    assert (death["queue"], death["reason"]) == (f"{prefix}.work.retry.1", "expired")


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_message_rejected_on_work_queue_lands_in_dlq(
    write, prefix: str, queue_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TYPE", queue_type)
    path = write(RECOVERY)
    code, _, err = await asyncio.to_thread(run, "topology", "apply", str(path), prefix=prefix)
    assert code == 0, err
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        body = b"\xff not json \x00"
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=f"{prefix}.work")
        delivered = await wait_for_message(channel, f"{prefix}.work", within=10, no_ack=False)
        await delivered.reject(requeue=False)
        dead = await wait_for_message(channel, f"{prefix}.work.dlq", within=10)
    assert dead.body == body
    death = dead.headers["x-death"][0]
    assert (death["queue"], death["reason"]) == (f"{prefix}.work", "rejected")


async def test_routing_through_alternate_and_bound_exchanges(topology: Path, prefix: str) -> None:
    code, _, err = await asyncio.to_thread(run, "topology", "apply", str(topology), prefix=prefix)
    assert code == 0, err
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        events = await channel.get_exchange(f"{prefix}.events", ensure=False)
        await events.publish(aio_pika.Message(b"routed"), routing_key="order.placed")
        await events.publish(aio_pika.Message(b"nobody"), routing_key="stock.counted")
        # the work queue (quorum, single active consumer) refuses basic.get: count instead
        work = await channel.declare_queue(f"{prefix}.work", passive=True)
        assert work.declaration_result.message_count == 1
        # exchange -> exchange binding: events -[order.#]-> audit (fanout) -> audit queue
        assert (await wait_for_message(channel, f"{prefix}.audit", 10)).body == b"routed"
        # no binding matched: the alternate exchange caught it
        assert (await wait_for_message(channel, f"{prefix}.unrouted", 10)).body == b"nobody"


def test_external_binding_to_a_missing_exchange_is_exit_1(write, prefix: str) -> None:  # type: ignore[no-untyped-def]
    path = write(
        "queues:\n  - name: ${P}.q\n"
        "bindings:\n  - {exchange: '${P}.elsewhere', queue: '${P}.q', external: true}\n"
    )
    code, out, err = run("topology", "apply", str(path), prefix=prefix)
    assert code == 1
    assert f"binding {prefix}.elsewhere -> queue {prefix}.q: NOT_FOUND" in err
    assert f"created  queue {prefix}.q (classic)" in out

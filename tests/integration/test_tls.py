"""TLS against RabbitMQ nodes of the suite's own (tests/tls_nodes.py): certificates made
by the test, a node that requires client certificates (and offers EXTERNAL), a node whose
certificate expired, the management API on HTTPS and a Redis of the test's own with TLS.
The RabbitMQ on 5672 is untouched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from framework import Consumer, Context, Event, Publisher, Settings, Worker
from framework.errors import BrokerUnavailable
from framework.idempotency import RedisStore, StoreUnavailable
from framework.management import Management
from framework.tls import redis_options
from framework.topology import QueueSpec, Topology
from tests.cluster import require_nodes
from tests.integration.worker_kit import eventually, redis_server, started
from tests.tls_nodes import CLIENT_USER, TlsNodes

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).with_name("kanin"))
REDIS_TLS_PORT = 6391


@pytest.fixture(scope="module")
def nodes() -> Iterator[TlsNodes]:
    require_nodes("TLS")
    started_nodes = TlsNodes()
    started_nodes.start()
    try:
        yield started_nodes
    finally:
        started_nodes.stop()


def files(nodes: TlsNodes, ca: str = "ca.pem", client: bool = True) -> dict[str, str]:
    """KANIN_BROKER_* settings naming the test's certificate files."""
    assert nodes.certs is not None
    path = nodes.certs.path
    values = {"KANIN_BROKER_CA_FILE": str(path(ca))}
    if client:
        values |= {
            "KANIN_BROKER_CERT_FILE": str(path("client.pem")),
            "KANIN_BROKER_KEY_FILE": str(path("client.key")),
            "KANIN_BROKER_KEY_PASSWORD_FILE": str(path("client-key-password")),
        }
    return values


def tls_settings(nodes: TlsNodes, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        key.removeprefix("KANIN_").lower(): value for key, value in files(nodes).items()
    }
    values |= {"broker_url": nodes.mutual.url(), "topology": "none.yaml", "shutdown_grace": 5.0}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def kanin(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("KANIN_", "OTEL_"))}
    return subprocess.run(
        [KANIN, *args],
        env={**clean, "PYTHONPATH": str(ROOT), "KANIN_CONNECT_TIMEOUT": "5", **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def publish(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    return kanin(
        "publish", "", "kanin.tls.nowhere", "-d", "{}", env={"KANIN_BROKER_URL": url, **env}
    )


class Ping(Event, type="test.tls.ping", version=1):
    n: int


class Pong(Event, type="test.tls.pong", version=1):
    n: int


async def test_over_mutual_tls_with_external_a_worker_consumes_and_publishes(
    nodes: TlsNodes,
) -> None:
    pongs: list[int] = []

    class Pinged(Consumer):
        queue = "tls.pings"

        async def handle(self, event: Ping, ctx: Context) -> None:
            await ctx.publish(Pong(n=event.n), exchange="", routing_key="tls.pongs")

    class Ponged(Consumer):
        queue = "tls.pongs"

        async def handle(self, event: Pong, ctx: Context) -> None:
            pongs.append(event.n)

    config = tls_settings(nodes, broker_url="amqps://localhost:" + str(nodes.mutual.tls_port) + "/",
                          broker_auth="external")  # fmt: skip
    topology = Topology(queues=[QueueSpec(name="tls.pings"), QueueSpec(name="tls.pongs")])
    async with started(Worker([Pinged, Ponged], config, topology=topology)):
        async with Publisher(config) as publisher:
            for n in range(5):
                await publisher.publish(Ping(n=n), exchange="", routing_key="tls.pings")
        await eventually(lambda: sorted(pongs) == list(range(5)), what=f"pongs: {pongs}")
        https = f"https://guest:guest@localhost:{nodes.mutual.https_port}/"
        management = Management.from_settings(tls_settings(nodes, management_url=https))
        ours: list[dict[str, Any]] = []
        for _ in range(100):  # the API lists a connection once its statistics arrive
            connections = await management.get("connections")
            ours = [c for c in connections if c["user"] == CLIENT_USER]
            if len(ours) >= 2:  # consuming and publishing
                break
            await asyncio.sleep(0.2)
    assert len(ours) >= 2, ours
    assert all(c["ssl"] and c["auth_mechanism"] == "EXTERNAL" for c in ours), ours
    assert all(c["peer_cert_subject"] == f"CN={CLIENT_USER}" for c in ours), ours


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("wrong CA", "certificate verify failed: self-signed certificate in certificate chain"),
        ("expired", "certificate verify failed: certificate has expired"),
        ("wrong host", "certificate verify failed: IP address mismatch, certificate is not "
                       "valid for '127.0.0.1'"),
        ("no client certificate", "the server asked for a client certificate"),
        ("plain AMQP to the TLS port", "this port speaks TLS"),
        ("TLS to the plain port", "this port does not speak TLS"),
    ],
)  # fmt: skip
def test_each_tls_failure_is_one_line_and_exit_1(nodes: TlsNodes, case: str, says: str) -> None:
    mutual, expired = nodes.mutual, nodes.expired
    url, env = {
        "wrong CA": (mutual.url(), files(nodes, ca="other-ca.pem")),
        "expired": (expired.url(), files(nodes, client=False)),
        "wrong host": (mutual.url(host="127.0.0.1"), files(nodes)),
        "no client certificate": (mutual.url(), files(nodes, client=False)),
        "plain AMQP to the TLS port": (mutual.url("amqp", port=mutual.tls_port), {}),
        "TLS to the plain port": (mutual.url("amqps", port=mutual.port), files(nodes)),
    }[case]
    started_at = time.monotonic()
    done = publish(url, KANIN_CONNECT_TIMEOUT="3", **env)
    assert done.returncode == 1, done.stderr
    # within the connect timeout (and the start of a process), not KANIN_PUBLISH_TIMEOUT's 30 s
    assert time.monotonic() - started_at < 20, "it waited for more than one connect"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    host = url.split("@")[1].rstrip("/")
    assert lines[0].startswith("error: ") and f"{host}: {says}" in lines[0], lines[0]
    assert "guest:guest" not in done.stderr


def test_a_worker_gives_up_at_once_on_a_certificate_that_will_not_change(
    nodes: TlsNodes, tmp_path: Path
) -> None:
    """kanin run waits KANIN_WAIT_FOR_BROKER for a broker to come up, but a failed
    certificate check is not waited out: exit 1 within the connect timeout."""
    (tmp_path / "tls_app.py").write_text(
        "from framework import Consumer, Context, Event\n"
        "class E(Event, type='t.e', version=1):\n    n: int\n"
        "class C(Consumer):\n    queue = 'tls.never'\n"
        "    async def handle(self, event: E, ctx: Context) -> None: ...\n"
    )
    env = {**files(nodes, ca="other-ca.pem"), "KANIN_BROKER_URL": nodes.mutual.url(),
           "KANIN_WAIT_FOR_BROKER": "60", "PYTHONPATH": str(tmp_path)}  # fmt: skip
    empty = tmp_path / "topology.yaml"
    empty.write_text("queues: []\n")
    started_at = time.monotonic()
    done = kanin("run", "tls_app", "--topology", str(empty), env=env)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started_at < 30, "waited for a certificate to change"
    assert "certificate verify failed" in done.stderr.strip().splitlines()[-1], done.stderr


def test_verification_off_connects_and_warns_at_every_start(nodes: TlsNodes) -> None:
    url = nodes.expired.url(host="127.0.0.1")  # expired, and the wrong host name too
    for _ in range(2):
        done = publish(url, KANIN_BROKER_TLS_VERIFY="false")
        assert done.returncode == 1, done.stderr  # unroutable: the broker answered
        assert "error: NO_ROUTE" in done.stderr, done.stderr
        assert "TLS verification is off (KANIN_BROKER_TLS_VERIFY=false)" in done.stderr


async def test_the_management_api_over_https_is_verified_with_the_same_ca(
    nodes: TlsNodes,
) -> None:
    https = f"https://guest:guest@localhost:{nodes.mutual.https_port}/"
    trusted = Management.from_settings(tls_settings(nodes, management_url=https))
    overview = await trusted.get("overview")
    assert overview["node"] == nodes.mutual.name
    other = str(nodes.certs.path("other-ca.pem")) if nodes.certs else ""
    untrusted = Management.from_settings(
        tls_settings(nodes, management_url=https, broker_ca_file=other)
    )
    with pytest.raises(BrokerUnavailable, match="certificate verify failed: self-signed"):
        await untrusted.get("overview")


@pytest.fixture
def redis_tls(nodes: TlsNodes) -> Iterator[int]:
    assert nodes.certs is not None
    path = nodes.certs.path
    with redis_server(
        REDIS_TLS_PORT, "--port", "0", "--tls-port", str(REDIS_TLS_PORT),
        "--tls-cert-file", str(path("server.pem")), "--tls-key-file", str(path("server.key")),
        "--tls-ca-cert-file", str(path("ca.pem")), "--tls-auth-clients", "no",
    ):  # fmt: skip
        yield REDIS_TLS_PORT


async def test_a_rediss_idempotency_store_is_verified_with_the_same_ca(
    nodes: TlsNodes, redis_tls: int
) -> None:
    url = f"rediss://localhost:{redis_tls}/0"
    handled: list[int] = []

    class Once(Consumer):
        queue = "tls.once"

        async def handle(self, event: Ping, ctx: Context) -> None:
            handled.append(event.n)

    config = tls_settings(nodes, idempotency_url=url)
    topology = Topology(queues=[QueueSpec(name="tls.once")])
    async with started(Worker([Once], config, topology=topology)):
        async with Publisher(config) as publisher:
            for _ in range(2):  # the same key twice: handled once, through the store
                await publisher.publish(
                    Ping(n=7), exchange="", routing_key="tls.once", idempotency_key="k-7"
                )
        await eventually(lambda: handled == [7], what=f"handled: {handled}")
        await asyncio.sleep(0.5)
    assert handled == [7]
    other = str(nodes.certs.path("other-ca.pem")) if nodes.certs else ""
    untrusted = RedisStore(url, tls=redis_options(tls_settings(nodes, broker_ca_file=other)))
    with pytest.raises(StoreUnavailable, match="certificate verify failed"):
        await untrusted.claim("k-8", 5.0)
    await untrusted.close()


def test_client_key_problems_are_one_line_config_errors(nodes: TlsNodes, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-it\n")
    env = files(nodes)
    cases = {
        "the key in KANIN_BROKER_KEY_FILE is encrypted": {"KANIN_BROKER_KEY_PASSWORD_FILE": ""},
        "the key's password is wrong": {"KANIN_BROKER_KEY_PASSWORD_FILE": str(wrong)},
        "KANIN_BROKER_CA_FILE": {"KANIN_BROKER_CA_FILE": str(tmp_path / "missing.pem")},
    }
    for says, change in cases.items():
        done = publish(nodes.mutual.url(), **{**env, **change})
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr, done.stderr

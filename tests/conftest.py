"""Shared fixtures. Integration tests talk to the real RabbitMQ on 127.0.0.1 (``make test``
starts it); every test works under its own random name prefix and deletes what it made."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

AMQP_URL = os.environ.get("KANIN_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
MANAGEMENT_URL = os.environ.get("KANIN_TEST_MANAGEMENT_URL", "http://127.0.0.1:15672/api/")


class BrokerAdmin:
    """Reads and deletes objects of vhost '/' through the management API, for assertions."""

    def __init__(self, base: str = MANAGEMENT_URL, user: str = "guest", password: str = "guest"):
        self.base = base
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", self.auth)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return json.loads(body) if body else None

    def queues(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {
            q["name"]: q for q in self.request("GET", "queues/%2F") if q["name"].startswith(prefix)
        }

    def exchanges(self, prefix: str) -> dict[str, dict[str, Any]]:
        return {
            x["name"]: x
            for x in self.request("GET", "exchanges/%2F")
            if x["name"].startswith(prefix)
        }

    def bindings(self, prefix: str) -> set[tuple[str, str, str, str, str]]:
        """Bindings from exchanges of the prefix (the default exchange's are left out)."""
        return {
            (
                b["source"],
                b["destination"],
                b["destination_type"],
                b["routing_key"],
                json.dumps(b["arguments"], sort_keys=True),
            )
            for b in self.request("GET", "bindings/%2F")
            if b["source"].startswith(prefix)
        }

    def delete_prefix(self, prefix: str) -> None:
        for name in self.queues(prefix):
            self.request("DELETE", "queues/%2F/" + quote(name, safe=""))
        for name in self.exchanges(prefix):
            self.request("DELETE", "exchanges/%2F/" + quote(name, safe=""))


@pytest.fixture(scope="session")
def admin() -> BrokerAdmin:
    return BrokerAdmin()


USED_PREFIXES: list[str] = []
# the management API lists a new queue only once the broker has reported on it (every
# few seconds): what a test made just before it ended may be missing from the listing
LISTING_LAG = 6.0


def _delete(admin: BrokerAdmin, value: str) -> None:
    try:
        admin.delete_prefix(value)
    except urllib.error.URLError as exc:
        if isinstance(exc, urllib.error.HTTPError):
            raise  # the management API answered: a real failure
        # nothing listens: no RabbitMQ, so nothing of this test's is on it


@pytest.fixture
def prefix(admin: BrokerAdmin) -> Iterator[str]:
    """A fresh name prefix; every queue and exchange under it is deleted after the test,
    and once more at the end of the session (see ``LISTING_LAG``). (Tests on the embedded
    broker use it too; without a RabbitMQ there is nothing to delete.)"""
    value = f"kt-{uuid.uuid4().hex[:10]}"
    USED_PREFIXES.append(value)
    yield value
    _delete(admin, value)


@pytest.fixture(scope="session", autouse=True)
def sweep(admin: BrokerAdmin) -> Iterator[None]:
    """At the end of the session, delete again under every prefix the tests used, once
    the management API lists everything they made."""
    yield
    if not USED_PREFIXES:
        return
    try:
        admin.request("GET", "overview")
    except urllib.error.URLError:
        return  # no RabbitMQ: nothing to sweep
    time.sleep(LISTING_LAG)
    left = [*admin.queues("kt-"), *admin.exchanges("kt-")]
    for value in set(USED_PREFIXES):
        if any(name.startswith(value) for name in left):
            _delete(admin, value)


@pytest.fixture
def vhost(admin: BrokerAdmin) -> Iterator[str]:
    """A fresh vhost that guest may use; deleted, with all it holds, after the test."""
    name = f"kt-{uuid.uuid4().hex[:10]}"
    admin.request("PUT", f"vhosts/{name}", {})
    admin.request(
        "PUT", f"permissions/{name}/guest", {"configure": ".*", "write": ".*", "read": ".*"}
    )
    yield name
    admin.request("DELETE", f"vhosts/{name}")


@pytest.fixture
def write(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a topology file and return its path."""

    def _write(text: str, name: str = "topology.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return _write


POSTGRES_URL = os.environ.get(
    "KANIN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def schema_url(schema: str) -> str:
    """``POSTGRES_URL`` with ``schema`` first on the search path."""
    joiner = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{joiner}options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema of database test; dropped, with all it holds, after the
    test. Its URL: ``schema_url(pg_schema)``."""
    import psycopg

    name = f"kt_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"create schema {name}")
    yield name
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"drop schema {name} cascade")

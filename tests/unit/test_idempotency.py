"""The memory store's semantics, and key scoping (no broker)."""

from __future__ import annotations

import asyncio

import pytest

from framework.errors import ConfigError
from framework.idempotency import MemoryStore, RedisStore, Status, open_store, scoped_key


async def test_claim_complete_and_duplicates() -> None:
    store = MemoryStore()
    first = await store.claim("k", lease=10)
    assert first.status is Status.NEW and first.token
    assert (await store.claim("k", lease=10)).status is Status.IN_PROGRESS
    await store.complete("k", first.token, retention=10)
    assert (await store.claim("k", lease=10)).status is Status.DONE


async def test_release_lets_the_next_try_claim_and_only_the_owner_releases() -> None:
    store = MemoryStore()
    claim = await store.claim("k", lease=10)
    await store.release("k", "someone-else")
    assert (await store.claim("k", lease=10)).status is Status.IN_PROGRESS
    await store.release("k", claim.token)
    assert (await store.claim("k", lease=10)).status is Status.NEW


async def test_expired_lease_and_retention() -> None:
    store = MemoryStore()
    await store.claim("k", lease=0.05)
    await asyncio.sleep(0.06)
    claim = await store.claim("k", lease=10)  # the worker holding it died
    assert claim.status is Status.NEW
    await store.complete("k", claim.token, retention=0.05)
    await asyncio.sleep(0.06)
    assert (await store.claim("k", lease=10)).status is Status.NEW  # forgotten after retention


async def test_memory_store_is_bounded() -> None:
    store = MemoryStore(max_keys=3)
    for key in "abcd":
        claim = await store.claim(key, lease=10)
        await store.complete(key, claim.token, retention=10)
    assert (await store.claim("a", lease=10)).status is Status.NEW  # the oldest went first
    assert (await store.claim("d", lease=10)).status is Status.DONE


def test_keys_are_scoped_per_consumer_and_hashed() -> None:
    a = scoped_key("shop.Inventory", "alice@example.com")
    b = scoped_key("shop.Payments", "alice@example.com")
    assert a != b
    assert "alice" not in a and len(a) == 40


def test_open_store() -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert open_store("off") is None
    assert isinstance(open_store("redis://127.0.0.1:6379/0"), RedisStore)
    with pytest.raises(ConfigError, match="memory://, redis://"):
        open_store("postgres://x")

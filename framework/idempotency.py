"""Idempotency: handle each event once per consumer, across redeliveries and duplicates.

Before the handler runs, the worker claims ``<consumer>:<key>`` in a store:

- ``new``: this worker holds a lease on the key for ``lease`` seconds; run the handler,
  then ``complete`` (done for ``retention`` seconds) or, on failure, ``release``;
- ``done``: handled already; ack without calling the handler (a duplicate);
- ``in_progress``: another worker holds the lease; try again shortly.

A lease that runs out (its worker died mid-handler) lets a later delivery claim the key.
Keys are hashed (SHA-256) before they are stored or logged: they may hold user data.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from framework.brokerurl import redact
from framework.errors import ConfigError, KaninError

NO_TLS: Mapping[str, Any] = {}  # a rediss:// URL's CA options (framework.tls.redis_options)


class StoreUnavailable(KaninError):
    """The idempotency store cannot be reached: the message is retried, never handled blind."""


class Status(Enum):
    NEW = "new"
    IN_PROGRESS = "in_progress"
    DONE = "done"


class Session(Protocol):
    """What a store that claims keys inside a database transaction (the inbox) gives the
    handler: that transaction, and publishing into it (an outbox)."""

    def transaction(self) -> AbstractAsyncContextManager[Any]: ...
    async def publish(self, event: Any, **fields: Any) -> str: ...


@dataclass(frozen=True)
class Claim:
    status: Status
    token: str = ""  # proves ownership of the lease to complete() and release()
    # a transactional store's session: complete() commits it, release() rolls it back
    session: Session | None = None


def scoped_key(consumer: str, key: str) -> str:
    """The stored form of a consumer's key: hashed, so no user data is kept or logged."""
    return hashlib.sha256(f"{consumer}:{key}".encode()).hexdigest()[:40]


class IdempotencyStore(Protocol):
    async def claim(self, key: str, lease: float) -> Claim: ...
    async def complete(self, key: str, token: str, retention: float) -> None: ...
    async def release(self, key: str, token: str) -> None: ...
    async def close(self) -> None: ...


class MemoryStore:
    """One process's keys: an LRU of at most ``max_keys`` entries, each with its expiry."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._tokens = itertools.count(1)
        self._keys: OrderedDict[str, tuple[str, float]] = OrderedDict()  # key -> (token|"", expiry)

    async def claim(self, key: str, lease: float) -> Claim:
        now = time.monotonic()
        entry = self._keys.get(key)
        if entry is not None and entry[1] > now:
            self._keys.move_to_end(key)
            return Claim(Status.DONE if entry[0] == "" else Status.IN_PROGRESS)
        token = str(next(self._tokens))
        self._keys[key] = (token, now + lease)
        self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)
        return Claim(Status.NEW, token)

    async def complete(self, key: str, token: str, retention: float) -> None:
        self._keys[key] = ("", time.monotonic() + retention)
        self._keys.move_to_end(key)

    async def release(self, key: str, token: str) -> None:
        entry = self._keys.get(key)
        if entry is not None and entry[0] == token:
            del self._keys[key]

    async def close(self) -> None:
        self._keys.clear()


# KEYS[1] = key; ARGV[1] = lease token; ARGV[2] = lease in ms.
# Returns 0 (claimed), 1 (in progress elsewhere), 2 (done).
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if not value then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 0
end
if value == 'done' then return 2 end
return 1
"""
# Delete the lease only if this worker still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def redis_client(url: str, timeout: float, what: str, tls: Mapping[str, Any] = NO_TLS) -> Any:
    """A ``redis.asyncio`` client of ``url`` answering text; ``what`` needs it, and says so
    when the package is missing. ``tls``: the CA settings of a ``rediss://`` URL
    (``framework.tls.redis_options``)."""
    try:
        from redis.asyncio import Redis
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError(f"{what} needs 'pip install kanin[redis]'") from None
    options = dict(tls) if url.startswith("rediss://") else {}
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=True,
        **options,
    )


class RedisStore:
    """Keys shared by every worker: ``SET NX PX`` leases, done markers with a TTL."""

    def __init__(
        self,
        url: str,
        prefix: str = "kanin:idem:",
        timeout: float = 2.0,
        tls: Mapping[str, Any] = NO_TLS,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.client = redis_client(url, timeout, "the Redis idempotency store", tls)
        self._claim = self.client.register_script(_CLAIM)
        self._release = self.client.register_script(_RELEASE)

    async def _call(self, what: str, coro: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await coro
        except (RedisError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"idempotency store {what} failed: {exc}") from None

    async def claim(self, key: str, lease: float) -> Claim:
        token = secrets.token_hex(8)
        lease_ms = max(1, int(lease * 1000))
        result = await self._call(
            "claim", self._claim(keys=[self.prefix + key], args=[token, lease_ms])
        )
        return Claim((Status.NEW, Status.IN_PROGRESS, Status.DONE)[int(result)], token)

    async def complete(self, key: str, token: str, retention: float) -> None:
        ms = max(1, int(retention * 1000))
        await self._call("complete", self.client.set(self.prefix + key, "done", px=ms))

    async def release(self, key: str, token: str) -> None:
        await self._call("release", self._release(keys=[self.prefix + key], args=[token]))

    async def close(self) -> None:
        await self.client.aclose()


def uses_inbox(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL store: the inbox (framework.outbox.inbox)."""
    return url == "postgres" or url.startswith(("postgresql://", "postgres://"))


def open_store(url: str, tls: Mapping[str, Any] = NO_TLS) -> IdempotencyStore | None:
    """``memory://`` (one process), ``redis://host:port/db`` (shared), or ``off``. (A
    worker asks its extensions first: the inbox adds ``postgresql://``.)"""
    if url in ("off", "none", ""):
        return None
    if url.startswith("memory://") or url == "memory":
        return MemoryStore()
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, tls=tls)
    raise ConfigError(
        "idempotency store URL must be memory://, redis://..., postgresql://... (the inbox) "
        f"or off, got {redact(url)!r}"
    )

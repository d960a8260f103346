"""One AMQP connection that comes back by itself, to whichever host of the URL answers.

A ``Link`` connects to the hosts of ``KANIN_BROKER_URL`` in its own order (the
transport shuffles it once per process, so workers spread over a cluster's nodes) and
takes the first that answers. When the connection is lost it tries the other hosts
first, then again and again with capped backoff, until it is up or closed; whoever needs
the connection waits for it within a bound of their own.

While the broker blocks the connection (a memory or disk alarm), ``blocked`` holds the
broker's reason. aiormq only logs ``connection.blocked``: kanin reads the reason from that
record and the state from aiormq's public ``ready()``, which waits while a connection is
blocked. The same log filter drops aiormq's records (tracebacks among them) of the
failures of kanin's connections that kanin reports itself, in one line each.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import ssl
import time
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection

from framework.errors import BrokerUnavailable
from framework.settings import Settings
from framework.tls import tls_reason, why_dropped
from framework.transport.amqp_errors import CHANNEL_GONE, reason

log = logging.getLogger("kanin.transport")
MAX_BACKOFF = 5.0  # seconds between two rounds over the hosts, at most
BLOCKED_POLL = 1.0  # seconds between two looks at whether the broker blocks a connection
# What a server that hung up before saying anything looks like (one speaking TLS, say).
_DROPPED = ("connection reset", "closed")


class Link:
    """A connection named ``name`` to the hosts of ``settings``, tried in ``order``."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        order: list[int],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.tls = tls  # for amqps://
        self.hosts = settings.broker_hosts
        self.order = order
        self.connection: AbstractConnection | None = None
        self.host = ""  # host:port of the current connection
        self.reconnects = 0
        self.last_error = "not connected yet"
        self.blocked: str | None = None
        self._blocked_since = 0.0
        self._blocked_total = 0.0
        self._next = 0  # position in ``order`` to try first
        self._up = asyncio.Event()
        self._rounds = 0  # rounds over every host that failed
        self._round_failed: asyncio.Future[None] | None = None  # for open() to wait on
        self._connecting: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._closing: asyncio.Future[None] | None = None  # a dropped connection's close
        self._closed = False
        self._ever_up = False
        self._tls_failed: set[int] = set()  # hosts whose last try failed on TLS

    @property
    def is_up(self) -> bool:
        return self._up.is_set()

    def blocked_seconds(self) -> float:
        current = time.monotonic() - self._blocked_since if self.blocked is not None else 0.0
        return self._blocked_total + current

    async def open(self, wait: float) -> None:
        """Connect now, trying every host for ``wait`` seconds (at least one round), else
        ``BrokerUnavailable`` naming the last failure."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        start = self._rounds
        self._ensure_connecting()
        while not self._up.is_set():
            tried = self._rounds > start
            hopeless = len(self._tls_failed) == len(self.hosts)  # retrying will not help
            if tried and (loop.time() >= deadline or hopeless):
                await self.close()
                raise BrokerUnavailable(self._unavailable(f" within {wait:g}s" if wait else ""))
            if self._round_failed is None:
                self._round_failed = loop.create_future()
            up: asyncio.Future[Any] = asyncio.ensure_future(self._up.wait())
            timeout = max(0.0, deadline - loop.time()) if tried else None
            try:
                await asyncio.wait(
                    [up, self._round_failed], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                up.cancel()

    async def get(self, within: float) -> AbstractConnection:
        """The connection, waiting up to ``within`` seconds while it (re)connects."""
        if not self._up.is_set():
            if self._closed:
                raise BrokerUnavailable(f"connection {self.name} is closed")
            self._ensure_connecting()
            try:
                await asyncio.wait_for(self._up.wait(), within)
            except TimeoutError:
                raise BrokerUnavailable(self.last_error) from None
        assert self.connection is not None
        return self.connection

    def lost(self, why: str) -> None:
        """The connection is unusable although aio-pika did not say so: drop it."""
        connection = self.connection
        if connection is not None and self._up.is_set():
            self._on_close(connection, ConnectionError(why))
            self._closing = asyncio.ensure_future(connection.close())

    def _unavailable(self, bound: str) -> str:
        return f"cannot connect to {self.settings.broker_url}{bound}: {self.last_error}"

    def _ensure_connecting(self) -> None:
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        delay = 0.0
        while not self._closed:
            for _ in self.order:
                index = self.order[self._next]
                self._next = (self._next + 1) % len(self.order)
                if await self._try(index):
                    return
            self._rounds += 1
            if self._round_failed is not None:
                self._round_failed.set_result(None)
                self._round_failed = None
            await asyncio.sleep(delay)
            delay = min(max(0.2, delay * 2), MAX_BACKOFF)

    async def _try(self, index: int) -> bool:
        host = self.hosts[index]
        _install_filter()
        token = _LINK.set(self)  # aiormq's tasks for this connection carry it
        try:
            connection = await aio_pika.connect(
                self.settings.amqp_url(index),
                timeout=self.settings.connect_timeout,
                client_properties={"connection_name": self.name},
                ssl_context=self.tls,
            )
        except CHANNEL_GONE as exc:
            why = reason(exc, self.settings)
            tls_failure = tls_reason(exc) is not None
            if "got <Connection.Close" in why:  # aiormq's words for a refused Connection.Open
                why = (
                    f"the broker refused to open vhost {self.settings.vhost!r} (it does not "
                    "exist, or the user has no permission on it)"
                )
            elif why in _DROPPED and not self._ever_up:  # a port that spoke AMQP still does
                hint = await why_dropped(host, self.tls, self.settings.connect_timeout)
                why, tls_failure = (hint, True) if hint else (why, False)
            if tls_failure:
                self._tls_failed.add(index)
            else:
                self._tls_failed.discard(index)
            self.last_error = f"{host}: {why}"
            log.debug("connection %s: %s", self.name, self.last_error)
            return False
        finally:
            _LINK.reset(token)
        if self._closed:
            await connection.close()
            return True
        self.connection, self.host = connection, host
        self._tls_failed.clear()
        connection.close_callbacks.add(self._on_close)
        self._watch = asyncio.create_task(self._watch_blocked(connection))
        if self._ever_up:
            self.reconnects += 1
            log.info("connection %s: connected again, to %s", self.name, host)
        self._ever_up = True
        self._up.set()
        return True

    def _on_close(self, connection: Any, exc: BaseException | None = None) -> None:
        if connection is not self.connection:
            return  # an older connection, already replaced
        self._up.clear()
        self.connection = None
        self._set_blocked(None)
        if self._watch is not None:
            self._watch.cancel()
        if self._closed:
            return
        self.last_error = f"{self.host}: {reason(exc, self.settings)}"
        log.warning("connection %s to %s lost (%s); reconnecting",
                    self.name, self.host, reason(exc, self.settings))  # fmt: skip
        self._ensure_connecting()

    async def _watch_blocked(self, connection: AbstractConnection) -> None:
        """Follow whether the broker blocks ``connection``, through aiormq's ``ready()``."""
        underlay: Any = getattr(connection, "transport", None)
        client = getattr(underlay, "connection", None)
        if client is None or not hasattr(client, "ready"):
            return
        connected = getattr(client, "connected", None)
        while True:
            ready = asyncio.ensure_future(client.ready())  # waits while blocked
            try:
                await asyncio.sleep(0)
                still_connected = connected is None or connected.is_set()
                if not ready.done() and still_connected:  # not a connection going away
                    self._set_blocked(self.blocked or "the broker blocks publishing")
                    await ready
                    self._set_blocked(None)
            finally:
                ready.cancel()
            await asyncio.sleep(BLOCKED_POLL)

    def _set_blocked(self, why: str | None) -> None:
        if why is not None and self.blocked is None:
            self._blocked_since = time.monotonic()
            log.warning("connection %s blocked by the broker: %s", self.name, why)
        elif why is None and self.blocked is not None:
            self._blocked_total += time.monotonic() - self._blocked_since
            log.info("connection %s unblocked", self.name)
        self.blocked = why

    async def close(self) -> None:
        self._closed = True
        for task in (self._connecting, self._watch):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        connection, self.connection = self.connection, None
        self._up.clear()
        self._set_blocked(None)
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*CHANNEL_GONE):
                await connection.close()


# --- aiormq's log records about kanin's connections --------------------------------

# The link whose connection is being opened: the tasks aiormq starts for a connection
# (its reader, writer and heartbeat) copy it, so each record they log names its link.
_LINK: contextvars.ContextVar[Link | None] = contextvars.ContextVar("kanin_link", default=None)
_HANDLED_BY_KANIN = (  # records kanin replaces with its own one line
    "Unexpected connection close from remote",
    "Cancelling cause reader exited abnormally",
    "error when creating transport",
)


def _install_filter() -> None:
    logger = logging.getLogger("aiormq.connection")
    if not any(isinstance(f, _ClientRecords) for f in logger.filters):
        logger.addFilter(_ClientRecords())


class _ClientRecords(logging.Filter):
    """For aiormq's records about kanin's connections: reads ``connection.blocked``'s
    reason, and drops the records of failures kanin reports itself, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        link = _LINK.get()
        if link is None:
            return True  # not a connection of kanin's: untouched
        args = record.args if isinstance(record.args, tuple) else ()
        if record.msg == "Connection %r was blocked by: %r" and len(args) == 2:
            link._set_blocked(str(args[1]) or "the broker blocks publishing")
            return False
        if record.msg == "Connection %r was unblocked":
            link._set_blocked(None)
            return False
        return not str(record.msg).startswith(_HANDLED_BY_KANIN)

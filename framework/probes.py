"""A worker's HTTP endpoints: ``/metrics``, ``/healthz`` (alive), ``/readyz`` (consuming).

A deliberately small HTTP/1.0 server on asyncio: one GET per connection, no keep-alive,
nothing to install. It runs in the worker's event loop, so ``/healthz`` answering means
the loop is not blocked.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from framework.metrics import registry

if TYPE_CHECKING:
    from framework.worker import Worker

log = logging.getLogger("kanin.probes")
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class ProbeServer:
    """Serves ``worker``'s probes and metrics on ``host:port`` while it runs."""

    def __init__(self, worker: Worker, port: int, host: str = "0.0.0.0") -> None:
        self.worker = worker
        self.host = host
        self.port = port
        self.registry = registry(worker)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]  # the real one, if 0 was asked
        log.info("probes and metrics on http://%s:%d/ (metrics, healthz, readyz)",
                 self.host, self.port)  # fmt: skip

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def respond(self, method: str, path: str) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"GET only\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/readyz":
            problems = self.worker.unready()
            if problems:
                return 503, "text/plain", ("\n".join(problems) + "\n").encode()
            return 200, "text/plain", b"ready\n"
        return 404, "text/plain", b"not found: try /metrics, /healthz or /readyz\n"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path, *_ = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
            status, kind, body = self.respond(method, path)
            head = (
                f"HTTP/1.0 {status} {_REASONS[status]}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ValueError, asyncio.IncompleteReadError, ConnectionError):
            pass  # a client that hung up or spoke nonsense gets nothing
        finally:
            writer.close()

"""A worker's HTTP endpoints: ``/metrics``, ``/healthz`` (alive), ``/readyz`` (consuming).

Served from a thread of its own (``http.server``, nothing to install), so the probes
answer even while a handler blocks the event loop: ``/healthz`` then says for how long
and by whom, and turns 503 once that passes ``KANIN_HEALTHZ_MAX_LAG``, so a liveness
probe restarts a worker whose loop never comes back.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from framework.metrics import registry

if TYPE_CHECKING:
    from framework.worker import Worker

log = logging.getLogger("kanin.probes")

REQUEST_TIMEOUT = 5.0  # seconds a client may take to send its request (then: closed)
PATHS = ("/metrics", "/healthz", "/readyz")


class ProbeServer:
    """Serves ``worker``'s probes and metrics on ``host:port`` while it runs."""

    def __init__(self, worker: Worker, port: int, host: str = "0.0.0.0") -> None:
        """``host``: the address to listen on (KANIN_HTTP_HOST): every interface by
        default, as containers need; 127.0.0.1 keeps the endpoints on this machine."""
        self.worker = worker
        self.host = host
        self.port = port
        self.registry = registry(worker)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        probes = self

        class Handler(BaseHTTPRequestHandler):
            # A request line of at most 64 KiB and 100 header lines (http.server's own
            # bounds), sent within REQUEST_TIMEOUT; no body is ever read.
            timeout = REQUEST_TIMEOUT

            def do_GET(self) -> None:
                status, kind, body = probes.respond(self.path)
                self.send(status, kind, body)

            do_HEAD = do_GET

            def refuse(self) -> None:
                """Every other method: 405, the connection closed without reading a body."""
                self.close_connection = True
                self.send(405, "text/plain", b"only GET and HEAD\n", {"Allow": "GET, HEAD"})

            do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = refuse

            def send(self, status: int, kind: str, body: bytes,
                     extra: dict[str, str] | None = None) -> None:  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (extra or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a probe every few seconds is not worth a log line

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]  # the real one, if 0 was asked
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="kanin-probes", daemon=True
        )
        self._thread.start()
        log.info("probes and metrics on http://%s:%d/ (metrics, healthz, readyz)",
                 self.host, self.port)  # fmt: skip

    async def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def respond(self, path: str) -> tuple[int, str, bytes]:
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return self.health()
        if path == "/readyz":
            problems = self.worker.unready()
            if problems:
                return 503, "text/plain", ("\n".join(problems) + "\n").encode()
            return 200, "text/plain", b"ready\n"
        return 404, "text/plain", f"not found: try {', '.join(PATHS)}\n".encode()

    def health(self) -> tuple[int, str, bytes]:
        watch = self.worker.loop_watch
        blocked = watch.blocked_for()
        if blocked >= watch.threshold:
            line = f"event loop blocked for {blocked:.1f}s by {watch.holder or 'unknown code'}"
            status = 503 if blocked >= self.worker.settings.healthz_max_lag else 200
            return status, "text/plain", f"{line}\n".encode()
        return 200, "text/plain", f"ok\nevent loop lag {watch.current():.3f}s\n".encode()

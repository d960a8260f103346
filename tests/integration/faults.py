"""A TCP fault proxy between kanin and RabbitMQ: outages without touching the broker.

    async with FaultProxy() as proxy:          # listens on 127.0.0.1:<proxy.port>
        url = proxy.url()                      # amqp://guest:guest@127.0.0.1:<port>/
        proxy.stall("to_client")               # hold what the broker sends (confirms...)
        proxy.cut()                            # drop every connection now
        proxy.refuse()                         # new connections are refused ...
        await proxy.accept()                   # ... until it listens again
        proxy.turn_away()                      # accepted and closed at once, until let_in()
        proxy.cut(mid_frame=True)              # the next bytes to the client arrive halved

Only connections through the proxy suffer; the broker and everyone else's connections
are untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Literal

Direction = Literal["to_broker", "to_client"]


class FaultProxy:
    def __init__(self, upstream: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.upstream = upstream
        self.port = 0
        self.accepted = 0  # connections accepted in all
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._gates = {"to_broker": asyncio.Event(), "to_client": asyncio.Event()}
        for gate in self._gates.values():
            gate.set()
        self._halve_next = False
        self._turn_away = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> FaultProxy:
        await self.accept()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.refuse()
        self.resume()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, user: str = "guest", password: str = "guest", vhost: str = "") -> str:
        return f"amqp://{user}:{password}@127.0.0.1:{self.port}/{vhost}"

    @property
    def connections(self) -> int:
        return len(self._open) // 2

    async def accept(self) -> None:
        """Listen (again, on the same port): new connections go through."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
            self.port = self._server.sockets[0].getsockname()[1]

    def refuse(self) -> None:
        """Stop listening: new connections are refused. Open ones stay."""
        if self._server is not None:
            self._server.close()
            self._server = None

    def cut(self, mid_frame: bool = False) -> None:
        """Drop every open connection now; with ``mid_frame``, at the next bytes the broker
        sends, half of them reach the client first."""
        if mid_frame:
            self._halve_next = True
            return
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def turn_away(self) -> None:
        """Accept new connections and close them at once (counted in ``accepted``)."""
        self._turn_away = True

    def let_in(self) -> None:
        self._turn_away = False

    def stall(self, direction: Direction | None = None) -> None:
        """Hold the bytes going one way (or both), without closing anything."""
        for name, gate in self._gates.items():
            if direction in (None, name):
                gate.clear()

    def resume(self) -> None:
        for gate in self._gates.values():
            gate.set()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._turn_away:
            client_w.transport.abort()
            return
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.transport.abort()
            return
        self._open |= {client_w, broker_w}
        pumps = [
            asyncio.create_task(self._pump(client_r, broker_w, "to_broker", client_w)),
            asyncio.create_task(self._pump(broker_r, client_w, "to_client", broker_w)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for writer in (client_w, broker_w):
            writer.transport.abort()
            self._open.discard(writer)
        self._tasks.difference_update(pumps)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: Direction,
        other: asyncio.StreamWriter,
    ) -> None:
        gate = self._gates[direction]
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                await gate.wait()
                data = await reader.read(65536)
                if not data:
                    return
                await gate.wait()
                if direction == "to_client" and self._halve_next and len(data) > 1:
                    self._halve_next = False
                    writer.write(data[: len(data) // 2])
                    await writer.drain()
                    self.cut()
                    return
                writer.write(data)
                await writer.drain()

"""A small client for the RabbitMQ management HTTP API: reads what lives on the broker.

Used to tell created objects from existing ones and to explain a refused declaration
with the broker's actual values. Plain ``urllib`` run in a thread: a handful of GETs
does not need an HTTP library.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from framework import tls
from framework.errors import BrokerError, BrokerUnavailable
from framework.settings import Settings

BindingKey = tuple[str, str, str, str, str]


def binding_key(
    source: str,
    destination: str,
    destination_type: str,
    routing_key: str,
    arguments: dict[str, Any],
) -> BindingKey:
    args = json.dumps(arguments, sort_keys=True)
    return (source, destination, destination_type, routing_key, args)


@dataclass(frozen=True)
class LiveTopology:
    """The objects of one vhost as the broker reports them."""

    exchanges: dict[str, dict[str, Any]]
    queues: dict[str, dict[str, Any]]
    bindings: set[BindingKey]


class Management:
    def __init__(
        self,
        base_url: str,
        user: str,
        password: str,
        vhost: str = "/",
        timeout: float = 5.0,
        context: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.context = context  # https://: verified as the broker is (framework.tls)
        self.user = user
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.vhost = vhost
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Settings) -> Management:
        base, user, password = settings.management()
        context = tls.client_context(settings) if base.startswith("https://") else None
        return cls(base, user, password, settings.vhost, settings.connect_timeout, context)

    @classmethod
    def for_settings(cls, settings: Settings) -> Management | None:
        """The broker's management API; None for the embedded broker, which has none."""
        if settings.broker_url.startswith("memory://"):
            return None
        return cls.from_settings(settings)

    def _get(self, path: str) -> Any:
        request = urllib.request.Request(self.base_url + path)
        request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self.context
            ) as response:
                return json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code in (401, 403):
                raise BrokerError(
                    f"management API at {self.base_url} refused user {self.user!r} ({exc.code})"
                ) from None
            raise BrokerError(f"management API at {self.base_url}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason: object = tls.tls_reason(exc) or getattr(exc, "reason", exc)
            raise BrokerUnavailable(
                f"management API at {self.base_url} did not answer: {reason}"
            ) from None

    async def get(self, path: str) -> Any:
        """GET ``/api/<path>``; ``None`` when the broker answers 404."""
        return await asyncio.to_thread(self._get, "api/" + path)

    def _vhost_path(self, kind: str) -> str:
        return f"{kind}/{quote(self.vhost, safe='')}"

    async def exchange(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.get(
            f"{self._vhost_path('exchanges')}/{quote(name, safe='')}"
        )
        return result

    async def queue(self, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.get(
            f"{self._vhost_path('queues')}/{quote(name, safe='')}"
        )
        return result

    async def queues(self, stats: bool = False) -> list[dict[str, Any]]:
        """Every queue of the vhost; with ``stats``, their message counts and rates."""
        path = self._vhost_path("queues") + ("" if stats else "?disable_stats=true")
        result: list[dict[str, Any]] = await self.get(path) or []
        return result

    async def snapshot(self) -> LiveTopology:
        exchanges, queues, bindings = await asyncio.gather(
            self.get(self._vhost_path("exchanges")),
            self.get(self._vhost_path("queues") + "?disable_stats=true"),
            self.get(self._vhost_path("bindings")),
        )
        return LiveTopology(
            exchanges={x["name"]: x for x in exchanges or []},
            queues={q["name"]: q for q in queues or []},
            bindings={
                binding_key(
                    b["source"],
                    b["destination"],
                    b["destination_type"],
                    b["routing_key"],
                    b.get("arguments") or {},
                )
                for b in bindings or []
            },
        )

"""The relay inside a worker (``kanin run`` given ``KANIN_OUTBOX_URL``, or ``kanin outbox
relay``): a worker extension, with the relay's readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from framework.outbox.relay import Relay
from framework.outbox.tables import check, connect
from framework.topology.model import Topology

if TYPE_CHECKING:
    from framework.idempotency import IdempotencyStore
    from framework.worker import Worker

log = logging.getLogger("kanin.outbox")


class OutboxRelay:
    """Runs a ``Relay`` of ``url`` on the worker's publisher."""

    def __init__(self, url: str, retention: float = 3600.0) -> None:
        self.url = url
        self.retention = retention
        self.relay: Relay | None = None
        self.task: asyncio.Task[None] | None = None

    def check(self, topology: Topology) -> None:
        pass

    async def start(self, worker: Worker) -> None:
        conn = await connect(self.url)  # a wrong URL or a missing table: refused at start
        try:
            await check(conn)
        finally:
            await conn.close()
        self.relay = Relay(self.url, worker.publisher, retention=self.retention)
        self.task = asyncio.create_task(self.relay.run())
        log.info("outbox relay sending from %s", self.url.rsplit("@", 1)[-1])

    def store(self, url: str, worker: Worker) -> IdempotencyStore | None:
        return None

    def unready(self) -> list[str]:
        return [] if self.relay is None else self.relay.unready()

    def metrics(self) -> Iterator[Metric]:
        relay = self.relay
        if relay is None:
            return
        status = relay.status
        yield GaugeMetricFamily(
            "kanin_outbox_pending", "Outbox rows waiting to be sent.",
            value=status.pending if status else 0,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "kanin_outbox_oldest_pending_seconds", "Age of the oldest outbox row waiting.",
            value=relay.oldest_age() or 0.0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "kanin_outbox_sent", "Outbox rows sent and confirmed by this relay.", value=relay.sent
        )
        yield CounterMetricFamily(
            "kanin_outbox_send_failures", "Tries of outbox rows that failed (kept, tried again).",
            value=relay.failed_tries,
        )  # fmt: skip

    async def stop(self, grace: float) -> None:
        if self.relay is None or self.task is None:
            return
        self.relay.stop()
        # a round cut short leaves its rows pending: sent again, with the same message_id
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.task, grace)

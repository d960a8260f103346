"""Prometheus metrics of a worker, read from its counters when scraped.

The hot path only bumps plain integers (``Stats``) and ``Histogram`` buckets
(framework.histogram); this module turns them into Prometheus families at scrape time, so
metrics cost nothing per message beyond those additions and need no global registry. It
is imported only by a worker that serves ``/metrics``: prometheus_client stays out of the
others' memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from framework.worker import Worker

# Stats field -> (metric name, help). Every field of ``runner.Stats`` is exported.
MESSAGE_COUNTERS = {
    "received": ("kanin_messages_consumed", "Messages delivered to the consumer."),
    "acked": ("kanin_messages_acked", "Acknowledgements sent to the broker."),
    "handled": ("kanin_messages_handled", "Messages whose handler succeeded."),
    "retried": ("kanin_messages_retried", "Messages moved to a retry wait queue."),
    "dead_lettered": ("kanin_messages_dead_lettered", "Messages moved to the DLQ (or dropped)."),
    "duplicates": ("kanin_messages_duplicates", "Duplicates acked without calling the handler."),
    "postponed": ("kanin_messages_postponed", "Messages postponed (key busy, store down)."),
    "returned": ("kanin_messages_returned", "Messages given back to their queue."),
    "no_key": ("kanin_messages_without_key", "Messages handled without deduplication."),
}


class WorkerCollector(Collector):
    """Everything a worker counts, as Prometheus families."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        # Runs on the probe server's thread: it only reads the worker's counters, and
        # copies each dict before iterating it.
        worker = self.worker
        labels = ["queue", "consumer"]
        for field, (name, text) in MESSAGE_COUNTERS.items():
            family = CounterMetricFamily(name, text, labels=labels)
            for runner in worker.runners:
                family.add_metric([runner.queue, runner.name], getattr(runner.stats, field))
            yield family
        durations = HistogramMetricFamily(
            "kanin_handler_duration_seconds", "Handler run time, per try.", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "kanin_messages_in_flight", "Messages being handled now.", labels=labels
        )
        for runner in worker.runners:
            key = [runner.queue, runner.name]
            h = runner.durations
            durations.add_metric(key, h.buckets(), h.total)
            in_flight.add_metric(key, len(runner.in_flight))
        yield durations
        yield in_flight
        publisher = worker.publisher
        yield _by_exchange(
            "kanin_published", "Messages published and confirmed.", dict(publisher.published)
        )
        yield _by_exchange(
            "kanin_publish_failures", "Publishes that failed.", dict(publisher.failures)
        )
        confirms = HistogramMetricFamily(
            "kanin_publish_confirm_seconds", "Time from publish to the broker's confirm."
        )
        latency = publisher.confirm_latency
        confirms.add_metric([], latency.buckets(), latency.total)
        yield confirms
        yield CounterMetricFamily(
            "kanin_reconnects", "Reconnections after a lost connection.", value=worker.reconnects
        )
        yield GaugeMetricFamily(
            "kanin_event_loop_lag_seconds",
            "How late the event loop turns: a handler running blocking code holds it.",
            value=worker.loop_watch.current(),
        )
        transport = worker.transport
        yield GaugeMetricFamily(
            "kanin_broker_blocked", "1 while the broker blocks publishing (resource alarm).",
            value=1 if transport.blocked else 0,
        )  # fmt: skip
        yield CounterMetricFamily(
            "kanin_broker_blocked_seconds", "Seconds the broker has blocked publishing in all.",
            value=transport.blocked_seconds(),
        )  # fmt: skip
        yield GaugeMetricFamily(
            "kanin_ready", "1 when connected and every consumer is consuming.",
            value=0 if worker.unready() else 1,
        )  # fmt: skip
        for extension in worker.extensions:
            yield from extension.metrics()


def _by_exchange(name: str, text: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=["exchange"])
    for exchange, count in sorted(counts.items()):
        family.add_metric([exchange or "amq.default"], count)
    return family


def registry(worker: Worker) -> CollectorRegistry:
    """A registry of its own for ``worker`` (no process-global state)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(WorkerCollector(worker))
    return reg

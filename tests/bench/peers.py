"""kanin against every peer, on the axes teams choose by, in one run on the local broker.

Contenders: raw aio-pika, kanin, FastStream, Dramatiq (its RabbitMQ broker) and Celery (its
AMQP transport), each publishing with its own API and handling with a handler that reads
the parsed payload. Prefetch 100 for raw aio-pika, kanin and FastStream (concurrency 100);
Dramatiq: one worker of 8 threads (its default); Celery: the threads pool, concurrency 8,
prefetch multiplier 4, acks_late. Rounds are interleaved; medians with [min..max].

  drain     a backlog of N, drained in this process: messages/s, client CPU per message;
  latency   a publisher at a fixed rate for 30 s against a worker process: publish to
            handler start, p50/p95/p99/max; at half raw aio-pika's drain rate in this run
            (publisher, worker and broker then share the two cores: a heavy load), and at
            a tenth of it (a light one);
  failures  a backlog of N drained by a worker process, first with no failures, then with
            every 10th message failing once (each contender's own retry, 1 s where it has
            a delay): healthy messages/s against the clean run, lost, handled twice;
  memory    a worker process's RSS idle with one consumer, and its peak (VmHWM) while
            draining a backlog of 100,000;
  scale     kanin run --processes 1 and 2 (raw aio-pika beside), draining N: messages/s,
            client CPU per message, and the RabbitMQ node's share of the machine's CPU;
            kanin without deduplication, and with its keys in Redis (shared by its
            processes; it refuses --processes 2 with its per-process store).

    python tests/bench/peers.py [drain] [latency] [failures] [memory] [scale]

Environment: KANIN_BENCH_MESSAGES (20000), KANIN_BENCH_ROUNDS (3),
KANIN_BENCH_LATENCY_SECONDS (30), KANIN_BENCH_LATENCY_SHARES (0.5,0.1: the publishing
rates as shares of raw aio-pika's drain rate), KANIN_BENCH_MEMORY_MESSAGES (100000),
KANIN_BENCH_RESULTS (the folder for JSON and PNG, default tests/bench/results).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import consume as base
import peer_scenarios as scenarios
from peer_drain import drain, timed
from peer_report import report

N, ROUNDS = base.N, base.ROUNDS
SHARES = [float(s) for s in os.environ.get("KANIN_BENCH_LATENCY_SHARES", "0.5,0.1").split(",")]
SECONDS = float(os.environ.get("KANIN_BENCH_LATENCY_SECONDS", "30"))
BACKLOG = int(os.environ.get("KANIN_BENCH_MEMORY_MESSAGES", "100000"))
SCENARIOS = ("drain", "latency", "failures", "memory", "scale")
SETTINGS = {"rounds": ROUNDS, "prefetch": base.PREFETCH, "threads": 8}
Results = dict[str, list[dict[str, float]]]


async def raw_drain_rate() -> float:
    """Raw aio-pika's drain rate, when the drain scenario is not part of this run."""
    connection = await aio_pika.connect(base.URL)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(base.QUEUE, durable=True)
        try:
            await base.fill(channel)
            rate, _ = await timed(base.raw_consume)
        finally:
            await channel.queue_delete(base.QUEUE)
    return rate


async def run_drain() -> float:
    rates, cpu = await drain()
    results: Results = {
        name: [
            {"msg_per_s": r, "cpu_us_per_msg": c}
            for r, c in zip(rates[name], cpu[name], strict=True)
        ]
        for name in rates
    }
    columns = [("msg_per_s", "msg/s", ",.0f"), ("cpu_us_per_msg", "CPU µs/msg", ".0f")]
    report(
        "drain",
        f"drain {N:,} messages",
        results,
        columns,
        {**SETTINGS, "messages": N},
        ["msg_per_s"],
        "messages/s (median)",
        ratio="msg_per_s",
    )
    return statistics.median(rates["raw aio-pika"])


async def each(
    scenario: str, measure: object, contenders: dict[str, tuple[object, ...]]
) -> Results:
    """``measure(connection, *args)`` for every contender, round after round."""
    results: Results = {name: [] for name in contenders}
    connection = await aio_pika.connect(base.URL)
    async with connection:
        for round_ in range(ROUNDS):
            for name, args in contenders.items():
                print(f"  {scenario}: round {round_ + 1}/{ROUNDS}, {name}", flush=True)
                results[name].append(await measure(connection, *args))  # type: ignore[operator]
    return results


LATENCY = [
    ("p50", "p50", ".1f"),
    ("p95", "p95", ".1f"),
    ("p99", "p99", ".1f"),
    ("max", "max", ".0f"),
    ("rate", "sent/s", ",.0f"),
]
FAILURES = [
    ("clean", "clean msg/s", ",.0f"),
    ("healthy", "healthy msg/s", ",.0f"),
    ("ratio", "healthy/clean", ".2f"),
    ("lost", "lost", ".0f"),
    ("twice", "twice", ".0f"),
    ("broker_cores_clean", "broker cores clean", ".2f"),
    ("broker_cores_mixed", "mixed", ".2f"),
]
MEMORY = [
    ("idle_mb", "idle", ".1f"),
    ("peak_mb", "peak", ".1f"),
    ("growth_mb", "peak - idle", ".1f"),
]
SCALE = [
    ("rate", "msg/s", ",.0f"),
    ("client_cpu_us", "client CPU µs/msg", ".0f"),
    ("broker_cpu_share", "broker CPU share", ".2f"),
]


async def main(chosen: list[str]) -> None:
    everyone = scenarios.NAMES
    raw_rate = await run_drain() if "drain" in chosen else 0.0
    if "latency" in chosen:
        raw_rate = raw_rate or await raw_drain_rate()
        for share in SHARES:
            rate = share * raw_rate
            results = await each(
                "latency", scenarios.latency, {n: (n, rate, SECONDS) for n in everyone}
            )
            report(
                f"latency-{share * 100:.0f}pct",
                f"publish to handler start, ms, at {rate:,.0f} msg/s for {SECONDS:.0f} s "
                f"({share:.0%} of raw aio-pika's drain rate)",
                results,
                LATENCY,
                {**SETTINGS, "rate": rate, "share_of_raw_drain": share, "seconds": SECONDS},
                ["p50", "p95", "p99"],
                "ms",
                ratio="p99",
            )
    if "failures" in chosen:
        results = await each("failures", scenarios.failure_mix, {n: (n, N) for n in everyone})
        report(
            "failures",
            f"failure mix: {N:,} messages, every 10th failing once",
            results,
            FAILURES,
            {**SETTINGS, "messages": N, "fail_every": 10},
            ["clean", "healthy"],
            "messages/s (median)",
        )
    if "memory" in chosen:
        results = await each("memory", scenarios.memory, {n: (n, BACKLOG) for n in everyone})
        report(
            "memory",
            f"worker RSS in MB: idle, and peak while draining {BACKLOG:,}",
            results,
            MEMORY,
            {**SETTINGS, "backlog": BACKLOG},
            ["idle_mb", "peak_mb"],
            "MB",
            ratio="idle_mb",
        )
    if "scale" in chosen:
        contenders: dict[str, tuple[object, ...]] = {
            "raw aio-pika": ("raw aio-pika", 1, N),
            "kanin, 1 process": ("kanin", 1, N, "off"),
            "kanin, 2 processes": ("kanin", 2, N, "off"),
            "kanin, 1, Redis keys": ("kanin", 1, N, "redis"),
            "kanin, 2, Redis keys": ("kanin", 2, N, "redis"),
        }
        results = await each("scale", scenarios.scale, contenders)
        report(
            "scale",
            f"drain {N:,}: kanin run --processes 1 and 2",
            results,
            SCALE,
            {**SETTINGS, "messages": N, "cpus": os.cpu_count()},
            ["rate"],
            "messages/s (median)",
            ratio="rate",
        )


if __name__ == "__main__":
    picked = sys.argv[1:] or list(SCENARIOS)
    unknown = sorted(set(picked) - set(SCENARIOS))
    if unknown:
        sys.exit(f"unknown scenario {', '.join(unknown)}: pick from {', '.join(SCENARIOS)}")
    asyncio.run(main(picked))

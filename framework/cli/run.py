"""``kanin run``: start workers for consumer classes."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, cast

import typer
from opentelemetry.trace import TracerProvider

from framework.cli.app import BrokerOpt, TopologyOpt, app, load_settings, reported
from framework.cli.guards import check_idempotency, topology_for
from framework.consumer import Consumer
from framework.errors import ConfigError, KaninError
from framework.idempotency import uses_inbox
from framework.loading import load_consumers
from framework.logs import configure as configure_logging
from framework.settings import Settings
from framework.topology import Topology
from framework.tracing import provider_from_env
from framework.worker import Extension, Worker, queue_specs

if TYPE_CHECKING:
    from framework.eventlog.projection import Projection

log = logging.getLogger("kanin.run")


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class LogFormat(StrEnum):
    text = "text"
    json = "json"


async def _watch_parent(parent: int, worker: Worker) -> None:
    """A forked worker whose parent died (even by SIGKILL) stops like on SIGTERM."""
    while os.getppid() == parent:  # noqa: ASYNC110 - no event tells of a parent's death
        await asyncio.sleep(1.0)
    log.warning("parent process %d is gone: stopping", parent)
    worker.stop()


async def _serve(worker: Worker, parent: int | None = None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    watch = asyncio.create_task(_watch_parent(parent, worker)) if parent else None
    try:
        await worker.run()
    finally:
        if watch is not None:
            watch.cancel()


def split(
    consumers: list[type[Consumer]],
) -> tuple[list[type[Projection]], list[type[Consumer]]]:
    """The projection classes among ``consumers``, and the others. (A projection class
    comes from a module that imported framework.eventlog: if none did, there is none.)"""
    module = sys.modules.get("framework.eventlog.projection")
    if module is None:
        return [], list(consumers)
    projections = cast(
        "list[type[Projection]]", [c for c in consumers if issubclass(c, module.Projection)]
    )
    return projections, [c for c in consumers if c not in projections]


def serve(
    make: Callable[[TracerProvider | None], Worker],
    settings: Settings,
    trace_console: bool = False,
    parent: int | None = None,
) -> None:
    """Run the worker ``make`` builds in this process until SIGTERM or SIGINT (or
    ``parent`` exits).

    Tracing is set up here, in the process that runs the worker (after any fork), from
    the ``OTEL_*`` variables; its spans are flushed before the process ends.
    """
    provider = provider_from_env(settings.service_name, console=trace_console)
    try:
        asyncio.run(_serve(make(provider), parent))
    finally:
        if provider is not None:
            provider.shutdown()


def run_worker(
    consumers: list[type[Consumer]],
    settings: Settings,
    topology: Topology | None,
    declare: bool,
    trace_console: bool = False,
    parent: int | None = None,
) -> None:
    """Run one worker for ``consumers`` (projections among them read their streams; the
    outbox of ``KANIN_OUTBOX_URL`` is relayed; consumers with a PostgreSQL idempotency
    store get the inbox)."""
    projections, plain = split(consumers)
    extensions: list[Extension] = []
    if projections:
        from framework.eventlog.service import Projections

        extensions.append(Projections(projections))
    if settings.outbox_url:
        from framework.outbox.service import OutboxRelay

        extensions.append(OutboxRelay(settings.outbox_url, settings.outbox_retention))
    if any(uses_inbox(c.idempotency or settings.idempotency_url) for c in plain):
        from framework.outbox.inbox import Inbox

        extensions.append(Inbox(settings))

    def make(provider: TracerProvider | None) -> Worker:
        return Worker(
            plain, settings, topology=topology, declare=declare, tracer_provider=provider,
            extensions=extensions,
        )  # fmt: skip

    serve(make, settings, trace_console, parent)


def _child(index: int, consumers: list[type[Consumer]], settings: Settings, *args: object) -> None:
    if settings.http_port:  # each process serves its own probes: port, port + 1, ...
        settings = settings.model_copy(update={"http_port": settings.http_port + index})
    with reported(quiet_client=False):
        run_worker(consumers, settings, *args)  # type: ignore[arg-type]


def _run_processes(
    count: int, consumers: list[type[Consumer]], settings: Settings, *args: object
) -> int:
    """Fork ``count`` workers; forward SIGTERM/SIGINT to them; exit with the worst code."""
    context = multiprocessing.get_context("fork")
    children = [
        context.Process(
            target=_child,
            args=(i, consumers, settings, *args, os.getpid()),
            name=f"kanin-{i}",
        )
        for i in range(count)
    ]
    for child in children:
        child.start()

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    codes = [child.exitcode or 0 for child in children]
    return max(codes, key=abs)


@app.command("run")
def run(
    targets: Annotated[
        list[str],
        typer.Argument(metavar="TARGET", hidden=True),
    ],
    topology: TopologyOpt = None,
    prefetch: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Prefetch per consumer without its own.")
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(min=1, metavar="N", help="Handlers in flight per consumer without its own."),
    ] = None,
    processes: Annotated[
        int, typer.Option(min=1, metavar="N", help="Worker processes to fork.")
    ] = 1,
    no_declare: Annotated[
        bool, typer.Option("--no-declare", help="Check the queues exist instead of declaring.")
    ] = False,
    broker_url: BrokerOpt = None,
    wait_for_broker: Annotated[
        float | None,
        typer.Option(
            min=0,
            metavar="SECONDS",
            help="Seconds to keep trying every broker host at start before exit 1. "
            "Default: $KANIN_WAIT_FOR_BROKER, else 30.",
            show_default=False,
        ),
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            metavar="PORT",
            help="Serve /metrics, /healthz and /readyz on this port (process i: port + i). "
            "Default: $KANIN_HTTP_PORT, else none.",
            show_default=False,
        ),
    ] = None,
    trace_console: Annotated[
        bool, typer.Option("--trace-console", help="Also print every span to stdout.")
    ] = False,
    log_level: Annotated[
        LogLevel,
        typer.Option(
            case_sensitive=False,
            metavar="LEVEL",
            help="Lines logged from this level on: DEBUG, INFO, WARNING or ERROR.",
        ),
    ] = LogLevel.INFO,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            case_sensitive=False,
            metavar="FORMAT",
            help="text or json. Default: $KANIN_LOG_FORMAT, else text.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run consumer classes until SIGTERM or SIGINT (in-flight handlers finish first).

    Each TARGET is a module (workers.inventory) or a class (workers.inventory:Reserve).
    Projection classes among them read their streams from their checkpoints.

    Tracing follows the standard OTEL_* variables (OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...); see docs/tracing.md.
    """
    configure_logging(log_level.value, "text")
    with reported(quiet_client=False):
        settings = load_settings(
            broker_url=broker_url,
            wait_for_broker=wait_for_broker,
            prefetch=prefetch,
            concurrency=concurrency,
            topology=topology,
            http_port=http_port,
            log_format=log_format.value if log_format is not None else None,
        )
        configure_logging(log_level.value, settings.log_format)
        consumers = load_consumers(targets)
        projections, plain = split(consumers)
        loaded = topology_for(settings, plain, topology)
        # unusable consumer classes or projections: exit 2 before forking
        if projections:
            from framework.eventlog.service import check_streams

            check_streams(projections, queue_specs(plain, loaded))
        check_idempotency(settings, plain, processes)
        if projections and processes > 1:
            raise ConfigError(
                f"--processes {processes} with projections ({projections[0].consumer_name()}): "
                "a projection reads its stream in order in one process; run projections in "
                "a 'kanin run' of their own, without --processes"
            )
        args = (loaded, not no_declare, trace_console)
        if processes == 1:
            run_worker(consumers, settings, *args)
            return
        code = _run_processes(processes, consumers, settings, *args)
        if code:
            raise KaninError(f"{processes} worker processes ended, worst exit code {code}")

"""``kanin run``: start workers for consumer classes."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from framework.cli.app import BrokerOpt, app, load_settings, reported
from framework.consumer import Consumer
from framework.errors import KaninError
from framework.loading import load_consumers
from framework.settings import Settings
from framework.topology import Topology, load_topology
from framework.worker import Worker, queue_specs

log = logging.getLogger("kanin.run")


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


def run_worker(
    consumers: list[type[Consumer]],
    settings: Settings,
    topology: Topology | None,
    declare: bool,
    topology_file: str,
    parent: int | None = None,
) -> None:
    """Run one worker in this process until SIGTERM or SIGINT (or ``parent`` exits)."""

    async def main() -> None:
        worker = Worker(
            consumers, settings, topology=topology, declare=declare, topology_file=topology_file
        )
        await _serve(worker, parent)

    asyncio.run(main())


def _child(*args: object) -> None:
    with reported(quiet_client=False):
        run_worker(*args)  # type: ignore[arg-type]


def _run_processes(count: int, *args: object) -> int:
    """Fork ``count`` workers; forward SIGTERM/SIGINT to them; exit with the worst code."""
    context = multiprocessing.get_context("fork")
    args = (*args, os.getpid())
    children = [context.Process(target=_child, args=args, name=f"kanin-{i}") for i in range(count)]
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
        typer.Argument(help="Modules (workers.inventory) or classes (workers.inventory:Reserve)."),
    ],
    topology: Annotated[
        Path | None,
        typer.Option(help="Topology file. Default: $KANIN_TOPOLOGY, else config/topology.yaml."),
    ] = None,
    prefetch: Annotated[
        int | None, typer.Option(min=1, help="Prefetch per consumer without its own.")
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Handlers in flight per consumer without its own.")
    ] = None,
    processes: Annotated[int, typer.Option(min=1, help="Worker processes to fork.")] = 1,
    no_declare: Annotated[
        bool, typer.Option("--no-declare", help="Check the queues exist instead of declaring.")
    ] = False,
    broker_url: BrokerOpt = None,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
) -> None:
    """Run consumer classes until SIGTERM or SIGINT (in-flight handlers finish first)."""
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    with reported(quiet_client=False):
        settings = load_settings(
            broker_url=broker_url, prefetch=prefetch, concurrency=concurrency, topology=topology
        )
        consumers = load_consumers(targets)
        path = settings.topology
        loaded: Topology | None = None
        if topology is not None or path.exists():
            loaded = load_topology(path)
        else:
            log.info("no topology file at %s: declaring only the consumers' queues", path)
        queue_specs(consumers, loaded)  # unusable consumer classes: exit 2 before forking
        if processes == 1:
            run_worker(consumers, settings, loaded, not no_declare, str(path))
            return
        code = _run_processes(processes, consumers, settings, loaded, not no_declare, str(path))
        if code:
            raise KaninError(f"{processes} worker processes ended, worst exit code {code}")

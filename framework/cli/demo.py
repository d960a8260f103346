"""``kanin demo``: consumers on the embedded broker, a few flows, their traces in the terminal."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from framework.cli.app import TopologyOpt, app, load_settings, reported
from framework.consumer import Consumer
from framework.errors import ConfigError
from framework.loading import load_attribute, load_consumers
from framework.logs import configure as configure_logging
from framework.topology import Topology, load_topology

SHOP = ["workers.inventory", "workers.payments", "workers.shipping", "workers.notifications"]


def _service(target: str) -> str:
    """A target's service name: its module's last part (workers.inventory -> inventory)."""
    return target.partition(":")[0].rpartition(".")[2]


@app.command("demo")
def demo(
    targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="TARGET", hidden=True, show_default=False),
    ] = None,
    seed: Annotated[
        str,
        typer.Option(
            metavar="MODULE:FUNCTION",
            help="module:function returning {flow name: event} to publish; the module's "
            "last part names the publishing service.",
        ),
    ] = "workers.orders:demo",
    topology: TopologyOpt = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Also print the workers' log lines (stderr).")
    ] = False,
) -> None:
    """Run consumers on the embedded broker (no server), publish a few
    events, print each step as it happens and each flow's trace as a tree;
    exit when all is settled.

    Each TARGET is a consumer module or class; each module runs as a service
    of that name.

    Without arguments (from the repository root): the example shop places
    three orders, paid at once, paid after a retry, and dead-lettered after
    its last attempt. Retry waits pass on the broker's clock, not yours.
    """
    from framework.demo import event_map, run_demo

    configure_logging("INFO" if verbose else "CRITICAL", "text")
    with reported():
        settings = load_settings(topology=topology)
        settings = settings.model_copy(update={"idempotency_url": "memory://"})
        services: dict[str, list[type[Consumer]]] = {}
        for target in targets or SHOP:
            try:
                consumers = load_consumers([target])
            except ConfigError as exc:
                if targets:
                    raise
                raise ConfigError(
                    f"{exc}: without targets, kanin demo runs the example shop from the "
                    "repository root"
                ) from None
            services.setdefault(_service(target), []).extend(consumers)
        loaded: Topology | None = None
        if topology is not None or settings.topology.exists():
            loaded = load_topology(settings.topology)
        flows = event_map(load_attribute(seed)(), seed)
        source = _service(seed)
        typer.echo(
            f"kanin demo: {', '.join(services)} on the embedded broker; "
            f"{source} publishes {len(flows)} events ({', '.join(flows)}).\n"
            "The clock is the broker's: retry waits pass on it at once.\n"
        )
        summary = asyncio.run(run_demo(services, loaded, source, flows, settings, sys.stdout))
        typer.echo(f"\n{len(flows)} flows: {summary}")

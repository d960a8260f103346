"""``kanin status``: the topology's queues at a glance, for people and for cron."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import TYPE_CHECKING, Annotated

import typer

from framework.cli.app import BrokerOpt, TopologyOpt, app, reported, server_settings
from framework.management import Management
from framework.settings import Settings
from framework.topology import Topology, load_topology

if TYPE_CHECKING:
    from framework.ops.status import Row


@app.command("status")
def status(
    topology: TopologyOpt = None,
    watch: Annotated[
        float | None,
        typer.Option(
            "--watch",
            metavar="SECONDS",
            min=0.5,
            help="Refresh every SECONDS until interrupted.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    broker_url: BrokerOpt = None,
) -> None:
    """Ready, unacked, consumers, rates, waiting retries and DLQ depth per work queue.
    Exit 1 when a DLQ holds messages or a work queue has no consumer."""
    from framework.ops.status import problems

    with reported():
        settings = server_settings("status", broker_url=broker_url)
        model = load_topology(topology if topology is not None else settings.topology)
        found = _rows(settings, model)
        if watch is None:
            _print(found, as_json)
        else:
            try:
                while True:
                    if sys.stdout.isatty():
                        typer.echo("\x1b[H\x1b[2J", nl=False)  # clear the screen, home
                    _print(found, as_json)
                    time.sleep(watch)
                    found = _rows(settings, model)
            except KeyboardInterrupt:
                pass
        if problems(found):
            raise typer.Exit(1)


def _rows(settings: Settings, model: Topology) -> list[Row]:
    from framework.ops.status import rows

    live = asyncio.run(Management.from_settings(settings).queues(stats=True))
    return rows(model, {q["name"]: q for q in live})


def _print(found: list[Row], as_json: bool) -> None:
    from framework.ops.status import problems, table

    trouble = problems(found)
    if as_json:
        typer.echo(json.dumps({"queues": [r.as_json() for r in found], "problems": trouble}))
        return
    typer.echo(table(found))
    for line in trouble:
        typer.echo(f"! {line}")

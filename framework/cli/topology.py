"""``kanin topology validate|plan|apply``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from framework.cli.app import BrokerOpt, app, load_settings, reported, server_settings
from framework.errors import BrokerUnavailable
from framework.management import LiveTopology, Management
from framework.settings import Settings
from framework.topology import Topology, expand, load_topology
from framework.topology.declare import apply_topology
from framework.topology.diff import describe_difference, plan
from framework.transport import open_transport

topology_app = typer.Typer(
    help="Validate a topology file, compare it with the broker, declare it.",
    no_args_is_help=True,
)
app.add_typer(topology_app, name="topology")

FileArg = Annotated[
    Path | None,
    typer.Argument(
        help="Topology YAML file. Default: $KANIN_TOPOLOGY, else config/topology.yaml.",
        show_default=False,
    ),
]


def _load(file: Path | None) -> tuple[Settings, Path, Topology]:
    settings = load_settings()
    path = file if file is not None else settings.topology
    return settings, path, load_topology(path)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@topology_app.command("validate")
def validate(file: FileArg = None) -> None:
    """Check a topology file without touching the broker; print what it declares."""
    with reported():
        _, path, topology = _load(file)
        decls = expand(topology)
        work = decls.count("work")
        typer.echo(f"{path}: ok")
        typer.echo(
            f"  {_plural(len(decls.exchanges), 'exchange')}, {_plural(work, 'queue')}, "
            f"{_plural(len(decls.bindings), 'binding')}"
        )
        typer.echo(
            f"  generated: {_plural(decls.count('retry'), 'retry queue')}, "
            f"{_plural(decls.count('dlq'), 'dead-letter queue')}"
        )


@topology_app.command("plan")
def plan_command(file: FileArg = None, broker_url: BrokerOpt = None) -> None:
    """Show what apply would create, and what differs from the live broker (exit 1 if any)."""
    with reported():
        _, _, topology = _load(file)
        decls = expand(topology)
        settings = server_settings("topology plan", broker_url=broker_url)
        live = asyncio.run(_live(settings))
        steps = plan(decls, live)
        marks = {"create": "+", "exists": "=", "differs": "!"}
        for step in steps:
            typer.echo(f"{marks[step.status]} {step.decl.describe()}")
            for diff in step.differences:
                kind = step.decl.describe().split()[0]
                name = getattr(step.decl, "name", "")
                where = topology.source(step.decl.origin)
                typer.echo(f"    {describe_difference(kind, name, diff, where)}")
        counts = {s: sum(1 for st in steps if st.status == s) for s in marks}
        typer.echo(
            f"plan for {settings.broker_url}: {counts['create']} to create, "
            f"{counts['exists']} unchanged, {counts['differs']} differ"
        )
        if counts["differs"]:
            typer.echo("apply would be refused: the broker holds objects with other arguments")
            raise typer.Exit(1)


async def _live(settings: Settings) -> LiveTopology:
    """The broker's objects, from its management API, once its AMQP port has answered (so
    a wrong broker URL is not taken for an empty broker)."""
    transport = open_transport(settings, f"{settings.service_name}-plan")
    try:
        await transport.connect(0)
    finally:
        await transport.close()
    management = Management.from_settings(settings)
    try:
        return await management.snapshot()
    except BrokerUnavailable as exc:
        raise BrokerUnavailable(
            f"{exc} (plan reads the broker's objects there; set KANIN_MANAGEMENT_URL)"
        ) from None


@topology_app.command("apply")
def apply(file: FileArg = None, broker_url: BrokerOpt = None) -> None:
    """Declare the file's exchanges, queues, bindings and generated retry/DLQ queues."""
    with reported():
        _, path, topology = _load(file)
        settings = server_settings("topology apply", broker_url=broker_url)
        result = apply_topology(topology, settings, typer.echo)
        summary = f"{result.created} created, {result.existing} already there"
        if result.declared:
            summary = f"{result.declared} declared"
        typer.echo(f"applied {path} to {settings.broker_url}: {summary}")

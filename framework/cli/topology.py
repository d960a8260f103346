"""``kanin topology validate|plan|apply``."""

from __future__ import annotations

import asyncio
import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from framework.cli.app import HELP, BrokerOpt, app, load_settings, reported, server_settings
from framework.errors import BrokerUnavailable, ConfigError
from framework.loading import load_consumers
from framework.management import LiveTopology, Management
from framework.settings import Settings
from framework.topology import Topology, expand, load_topology
from framework.topology.declare import apply_topology
from framework.topology.diff import Step, describe_difference, plan, stale
from framework.transport import open_transport

topology_app = typer.Typer(
    help="Validate a topology file, compare it with the broker, declare it.",
    **HELP,
)
app.add_typer(topology_app, name="topology")

FileArg = Annotated[
    Path | None,
    typer.Argument(metavar="FILE", hidden=True, show_default=False),
]


def _load(file: Path | None) -> tuple[Settings, Path, Topology]:
    settings = load_settings()
    path = file if file is not None else settings.topology
    return settings, path, load_topology(path)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@topology_app.command("validate")
def validate(file: FileArg = None) -> None:
    """Check a topology FILE without touching the broker; print what it declares.

    FILE defaults to $KANIN_TOPOLOGY, else config/topology.yaml (so for plan, apply).
    """
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
def plan_command(
    file: FileArg = None,
    broker_url: BrokerOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (for CI).")] = False,
) -> None:
    """Compare FILE with the live broker both ways: what apply would create, what
    differs (exit 1), and what the file owns but no longer declares (stale)."""
    with reported():
        _, _, topology = _load(file)
        decls = expand(topology)
        settings = server_settings("topology plan", broker_url=broker_url)
        live = asyncio.run(_live(settings))
        steps = plan(decls, live) + stale(decls, live, topology.owns)
        counts = {s: sum(1 for st in steps if st.status == s) for s in MARKS}
        lines = {id(step): _explained(step, topology) for step in steps}
        if as_json:
            typer.echo(json.dumps(_plan_json(settings, steps, counts, lines), indent=2))
        else:
            for step in steps:
                typer.echo(f"{MARKS[step.status]} {step.decl.describe()}")
                for line in lines[id(step)]:
                    typer.echo(f"    {line}")
            typer.echo(
                f"plan for {settings.broker_url}: {counts['create']} to create, "
                f"{counts['exists']} unchanged, {counts['differs']} differ, "
                f"{counts['stale']} stale"
            )
            if counts["stale"]:
                typer.echo("stale: on the broker, owned by the file, no longer declared "
                           "(apply --prune removes them)")  # fmt: skip
        if counts["differs"]:
            if not as_json:
                typer.echo("apply would be refused: the broker holds objects with other arguments")
            raise typer.Exit(1)


MARKS = {"create": "+", "exists": "=", "differs": "!", "stale": "-"}


def _explained(step: Step, topology: Topology) -> list[str]:
    kind = step.decl.describe().split()[0]
    name = getattr(step.decl, "name", "")
    where = topology.source(step.decl.origin)
    return [describe_difference(kind, name, diff, where) for diff in step.differences]


def _plan_json(
    settings: Settings, steps: list[Step], counts: dict[str, int], lines: dict[int, list[str]]
) -> dict[str, object]:
    def entry(step: Step) -> dict[str, object]:
        item: dict[str, object] = {"object": step.decl.describe()}
        if step.differences:
            item["differences"] = [
                {"argument": d.argument, "broker": d.broker, "file": d.file}
                for d in step.differences
            ]
            item["explained"] = lines[id(step)]
        return item

    names = {"create": "create", "exists": "unchanged", "differs": "differ", "stale": "stale"}
    return {
        "broker": settings.broker_url,
        "counts": {names[k]: v for k, v in counts.items()},
        **{names[k]: [entry(s) for s in steps if s.status == k] for k in MARKS},
    }


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
def apply(
    file: FileArg = None,
    broker_url: BrokerOpt = None,
    prune: Annotated[
        bool,
        typer.Option(
            "--prune", help="Then remove stale objects (see plan); a queue only when empty."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --prune: remove stale queues that hold messages.")
    ] = False,
) -> None:
    """Declare the exchanges, queues, bindings and generated retry/DLQ queues of FILE."""
    with reported():
        _, path, topology = _load(file)
        settings = server_settings("topology apply", broker_url=broker_url)
        if force and not prune:
            raise ConfigError("--force goes with --prune: it removes stale queues with messages")
        result = apply_topology(topology, settings, typer.echo, prune, force)
        summary = f"{result.created} created, {result.existing} already there"
        if result.declared:
            summary = f"{result.declared} declared"
        if prune:
            summary += f", {result.removed} stale removed"
        typer.echo(f"applied {path} to {settings.broker_url}: {summary}")


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    dot = "dot"


@topology_app.command("graph")
def graph_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", hidden=True)],
    targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="TARGET", hidden=True, show_default=False),
    ] = None,
    form: Annotated[
        GraphFormat,
        typer.Option("--format", metavar="FORMAT", help="mermaid (GitHub renders it) or dot."),
    ] = GraphFormat.mermaid,
) -> None:
    """Draw the topology FILE: exchanges -> bindings -> queues, retry and DLQ queues
    aside, and the consumer classes of each TARGET (a module or class, as for kanin
    run) at their queues."""
    from framework.ops.graph import build, render

    with reported():
        topology = load_topology(file)
        consumers = [(c.__name__, c.queue) for c in load_consumers(targets)] if targets else []
        typer.echo(render(build(topology, consumers), form.value), nl=False)


@topology_app.command("export")
def export_command(
    prefix: Annotated[
        str,
        typer.Option(
            "--prefix", metavar="PREFIX", help="Only objects whose names start with PREFIX."
        ),
    ] = "",
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="FILE", help="Write here. Default: standard output."),
    ] = None,
    broker_url: BrokerOpt = None,
) -> None:
    """Write the live broker's exchanges, queues and bindings as a topology file."""
    from framework.ops.export import export_topology

    with reported():
        settings = server_settings("topology export", broker_url=broker_url)
        exported = export_topology(asyncio.run(_live(settings)), prefix)
        for note in exported.skipped:
            typer.echo(f"note: left out {note}", err=True)
        if out is None:
            typer.echo(exported.yaml(), nl=False)
            return
        try:
            out.write_text(exported.yaml(), encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--out {out}: {exc.strerror}") from None
        document = exported.document
        typer.echo(
            f"wrote {out}: {_plural(len(document.get('exchanges', [])), 'exchange')}, "
            f"{_plural(len(document.get('queues', [])), 'queue')}, "
            f"{_plural(len(document.get('bindings', [])), 'binding')}"
        )


@topology_app.command("permissions")
def permissions_command(
    file: Annotated[Path, typer.Argument(metavar="FILE", hidden=True)],
    targets: Annotated[
        list[str] | None,
        typer.Argument(metavar="TARGET", hidden=True, show_default=False),
    ] = None,
    deploy_user: Annotated[
        str, typer.Option("--deploy-user", metavar="USER", help="The user that applies FILE.")
    ] = "kanin-deploy",
    runtime_user: Annotated[
        str, typer.Option("--runtime-user", metavar="USER", help="The user the workers run as.")
    ] = "kanin-runtime",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print the least RabbitMQ permissions, as rabbitmqctl commands, for a deploy user
    that runs kanin topology apply FILE and a runtime user that runs kanin run
    --no-declare TARGET... and publishes. Without TARGET, the runtime user may read every
    queue of FILE and publish to every exchange of it."""
    from framework.cli.permissions import least_permissions, render

    with reported():
        settings = load_settings()
        topology = load_topology(file)
        grants, notes = least_permissions(settings, topology, targets or [])
        for note in notes:
            typer.echo(f"note: {note}", err=True)
        users = {"deploy": deploy_user, "runtime": runtime_user}
        typer.echo(render(grants, users, settings.vhost, file, targets or [], as_json), nl=False)

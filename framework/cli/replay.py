"""``kanin replay``: run projections over a range of their stream, then exit."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from framework.cli.app import BrokerOpt, TopologyOpt, app, on_broker, reported, server_settings
from framework.cli.guards import topology_for
from framework.errors import ConfigError
from framework.loading import load_consumers
from framework.publisher import Publisher
from framework.settings import Settings
from framework.tracing import Tracing, provider_from_env
from framework.transport import Transport
from framework.transport.base import StreamOffset

if TYPE_CHECKING:
    from framework.eventlog.projection import Projection
    from framework.eventlog.reader import ProjectionReader
    from framework.eventlog.replay import Outcome, Replay


@app.command("replay")
def replay_command(
    stream: Annotated[str, typer.Argument(metavar="STREAM", hidden=True)],
    targets: Annotated[list[str], typer.Argument(metavar="TARGET", hidden=True)],
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="WHERE",
            help="first, an offset or an ISO 8601 time. Default: after the checkpoint, "
            "else the projection's offset.",
            show_default=False,
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="WHERE",
            help="Last offset, or an ISO 8601 time (events published after it are left). "
            "Default: the stream's last event when the replay starts.",
            show_default=False,
        ),
    ] = None,
    reset: Annotated[
        bool,
        typer.Option("--reset", help="Clear the checkpoint (and the read model) first."),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before --reset.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the range and change nothing.")
    ] = False,
    topology: TopologyOpt = None,
    broker_url: BrokerOpt = None,
) -> None:
    """Run the projections of TARGET (a module or module:Class) that read STREAM over a
    range of it, moving their checkpoints as they go, and exit at its end. Stop the
    'kanin run' of those projections first: two readers of one projection apply its
    events twice."""
    from framework.eventlog.projection import Projection
    from framework.eventlog.replay import Outcome, Replay, last_offset
    from framework.eventlog.service import check_streams, open_stores

    with reported():
        settings = server_settings("replay", broker_url=broker_url, topology=topology)
        classes = [
            c for c in load_consumers(targets) if issubclass(c, Projection) and c.queue == stream
        ]
        if not classes:
            raise ConfigError(f"no projection in {' '.join(targets)} reads {stream!r}")
        loaded = topology_for(settings, [], topology)
        if loaded is not None:
            check_streams(classes, loaded)
        begin = _where("--from", start, ("first",)) if start is not None else None
        until = _where("--to", to, ()) if to is not None else None
        if isinstance(begin, int) and isinstance(until, int) and until < begin:
            raise ConfigError(f"--to {until} comes before --from {begin}")
        if reset and not dry_run and not yes and sys.stdin.isatty():
            names = ", ".join(c.projection_name() for c in classes)
            if not typer.confirm(f"Clear the checkpoint and read model of {names}?"):
                typer.echo("nothing changed")
                raise typer.Exit(1)
        provider = provider_from_env(settings.service_name)
        tracing = Tracing(provider, fast=settings.fast_paths)

        async def work(transport: Transport) -> list[Outcome | str]:
            stores = await open_stores(classes, settings)
            async with Publisher(settings, transport, tracing=tracing) as publisher:
                job = Replay(
                    transport, publisher, tracing, stores, start=begin,
                    to_offset=until if isinstance(until, int) else None,
                    to_time=until if isinstance(until, datetime) else None,
                )  # fmt: skip
                try:
                    end = await last_offset(transport, stream)
                    if dry_run:
                        return [await _plan(job, cls, end, reset, settings) for cls in classes]
                    outcomes: list[Outcome | str] = []
                    for cls in classes:
                        if reset:
                            await job.reset(cls)
                        _refuse_rereading(cls, begin, await stores[cls].load(cls.projection_name()))
                        with progress_bar() as job.progress:
                            outcomes.append(await job.run(cls, end))
                    return outcomes
                finally:
                    for store in {id(s): s for s in stores.values()}.values():
                        await store.close()

        try:
            outcomes = on_broker(settings, "replay", work)
        finally:
            if provider is not None:
                provider.shutdown()
        for outcome in outcomes:
            typer.echo(outcome if isinstance(outcome, str) else outcome.line())
        if any(isinstance(o, Outcome) and o.halted for o in outcomes):
            raise typer.Exit(1)


async def _plan(
    job: Replay, cls: type[Projection], end: int | None, reset: bool, settings: Settings
) -> str:
    from framework.eventlog.service import checkpoint_url

    saved = None if reset else await job.stores[cls].load(cls.projection_name())
    url, _ = checkpoint_url(cls, settings)
    start = job.start if job.start is not None else (saved + 1 if saved is not None else cls.offset)
    last = end if job.to_offset is None or end is None else min(end, job.to_offset)
    return (
        f"{cls.projection_name()}: would {'reset its checkpoint and ' if reset else ''}read "
        f"{cls.queue} from {start!r} to {'the end' if last is None else last}"
        f"{f' or {job.to_time.isoformat()}' if job.to_time else ''} "
        f"(checkpoint {saved}, store {url.split('@')[-1]}); stream ends at {end}"
    )


def _refuse_rereading(cls: type[Projection], begin: StreamOffset | None, saved: int | None) -> None:

    if saved is None or begin is None:
        return
    if begin == "first" or (isinstance(begin, int) and begin <= saved):
        raise ConfigError(
            f"{cls.projection_name()} has handled {cls.queue} up to offset {saved}: "
            f"--from {begin} would pass over those events; add --reset to handle them again"
        )


def _where(flag: str, value: str, words: tuple[str, ...]) -> StreamOffset:
    """An offset, an ISO 8601 time, or one of ``words``."""
    from framework.ops.tail import parse_offset

    try:
        where = parse_offset(value)
    except ValueError:
        where = None
    if where is None or (isinstance(where, str) and where not in words):
        said = ", ".join([*words, "an offset"])
        raise ConfigError(f"{flag} {value!r}: write {said} or an ISO 8601 time")
    return where


@contextmanager
def progress_bar() -> Iterator[Callable[[ProjectionReader, Outcome], None] | None]:
    """Offset, events/s and time left on a terminal; nothing otherwise."""

    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("offset {task.fields[offset]}/{task.fields[end]}"),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("replay", total=None, offset="-", end="-", rate="")

        def update(reader: ProjectionReader, outcome: Outcome) -> None:
            rate = outcome.events / outcome.seconds if outcome.seconds > 0 else 0
            start = outcome.first if outcome.first is not None else reader.position or 0
            total = None if outcome.end is None else outcome.end - start + 1
            done = 0 if reader.position is None else reader.position - start + 1
            bar.update(
                task, description=f"replay {reader.name}", total=total, completed=max(done, 0),
                offset=reader.position, end=outcome.end, rate=f"{rate:.0f} events/s",
            )  # fmt: skip

        yield update

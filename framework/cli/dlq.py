"""``kanin dlq list|show|replay|purge|export``: the dead-letter queues, operated."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from framework.cli.app import HELP, BrokerOpt, app, on_broker, reported, server_settings
from framework.errors import ConfigError, KaninError
from framework.settings import Settings
from framework.topology import load_topology
from framework.tracing import Tracing, provider_from_env
from framework.transport import Transport

if TYPE_CHECKING:  # the DLQ operations load when a dlq command runs
    from framework.ops import dlq
    from framework.ops.walk import Tally

dlq_app = typer.Typer(
    help="Dead-letter queues: list their failures, show, replay, export or purge messages.",
    **HELP,
)
app.add_typer(dlq_app, name="dlq")

T = TypeVar("T")

QueueArg = Annotated[str, typer.Argument(metavar="QUEUE", hidden=True)]  # orders.dlq
ErrorTypeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--error-type",
        metavar="TYPE",
        help="Only messages whose error type is TYPE (the broker's own dead letters: "
        "broker:<reason>). Repeatable.",
        show_default=False,
    ),
]
ConsumerOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--consumer",
        metavar="CLASS",
        help="Only messages that failed in consumer class CLASS. Repeatable.",
        show_default=False,
    ),
]
MessageIdOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--message-id",
        metavar="ID",
        help="Only the message with this message_id or idempotency key. Repeatable.",
        show_default=False,
    ),
]
AfterOpt = Annotated[
    str | None,
    typer.Option(
        "--failed-after",
        metavar="TIME",
        help="Only messages that failed at or after TIME (ISO 8601; UTC unless it says).",
        show_default=False,
    ),
]
BeforeOpt = Annotated[
    str | None,
    typer.Option(
        "--failed-before",
        metavar="TIME",
        help="Only messages that failed before TIME.",
        show_default=False,
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option("--limit", min=1, metavar="N", help="At most N messages.", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _time(flag: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"{flag} {value!r}: not an ISO 8601 time (2026-11-30T14:00)") from None


def _selection(
    error_type: list[str] | None,
    consumer: list[str] | None,
    message_id: list[str] | None,
    failed_after: str | None,
    failed_before: str | None,
) -> dlq.Selection:
    from framework.ops import dlq

    return dlq.Selection.of(
        error_type,
        consumer,
        message_id,
        _time("--failed-after", failed_after),
        _time("--failed-before", failed_before),
    )


def _run(settings: Settings, work: Callable[[Transport], Awaitable[T]]) -> T:
    try:
        return on_broker(settings, "dlq", work)
    except KeyboardInterrupt:
        typer.echo("interrupted: whatever was not moved is still in the queue, in order", err=True)
        raise typer.Exit(130) from None


def _timed(
    settings: Settings, work: Callable[[Transport], Awaitable[Tally]]
) -> tuple[Tally, float]:
    started = time.monotonic()
    tally = _run(settings, work)
    return tally, time.monotonic() - started


@dlq_app.command("list")
def list_command(
    topology: Annotated[
        Path | None,
        typer.Option(
            "--topology",
            metavar="FILE",
            help="The DLQs of this topology file. Default: every *.dlq queue of the vhost.",
            show_default=False,
        ),
    ] = None,
    as_json: JsonOpt = False,
    broker_url: BrokerOpt = None,
) -> None:
    """Every DLQ with its depth, first and last failure, and failure groups
    (error type and consumer; the broker's own dead letters by reason)."""
    from framework.cli.dlq_view import when
    from framework.ops import dlq

    with reported():
        settings = server_settings("dlq list", broker_url=broker_url)
        model = load_topology(topology) if topology is not None else None

        async def survey(transport: Transport) -> list[dlq.Overview | str]:
            found: list[dlq.Overview | str] = []
            for name in await dlq.dead_letter_queues(settings, model):
                try:
                    found.append(await dlq.overview(transport, name))
                except dlq.NoSuchQueue:
                    if model is None:
                        raise
                    found.append(name)  # declared by the file, not on the broker
            return found

        found = _run(settings, survey)
        if as_json:
            rows = [
                o.as_json() if isinstance(o, dlq.Overview) else {"queue": o, "missing": True}
                for o in found
            ]
            typer.echo(json.dumps(rows, indent=2))
            return
        if not found:
            typer.echo("no dead-letter queues")
        for item in found:
            if isinstance(item, str):
                typer.echo(f"{item}: not on the broker (kanin topology apply declares it)")
                continue
            span = ""
            if item.oldest is not None and item.newest is not None:
                span = f", failed {when(item.oldest)} .. {when(item.newest)}"
            typer.echo(f"{item.queue}: {item.depth} message{'' if item.depth == 1 else 's'}{span}")
            for (error, consumer), count in item.groups.most_common():
                typer.echo(f"  {count:>6}  {error}" + (f"  in {consumer}" if consumer else ""))


@dlq_app.command("show")
def show_command(
    queue: QueueArg,
    limit: LimitOpt = None,
    error_type: ErrorTypeOpt = None,
    consumer: ConsumerOpt = None,
    message_id: MessageIdOpt = None,
    failed_after: AfterOpt = None,
    failed_before: BeforeOpt = None,
    as_json: JsonOpt = False,
    broker_url: BrokerOpt = None,
) -> None:
    """Print the messages parked in QUEUE (orders.dlq, say): ids, error, origin, trace
    id, headers and body. The queue is left exactly as it was."""
    from framework.cli.dlq_view import describe
    from framework.ops import dlq

    with reported():
        settings = server_settings("dlq show", broker_url=broker_url)
        select = _selection(error_type, consumer, message_id, failed_after, failed_before)
        found = _run(settings, lambda t: dlq.show(t, queue, select, limit))
        if as_json:
            typer.echo(json.dumps([p.record() for p in found], indent=2, ensure_ascii=False))
            return
        for number, parked in enumerate(found, start=1):
            typer.echo(f"--- {queue}: {number} of {len(found)}")
            typer.echo(describe(parked))
        typer.echo(f"{len(found)} message{'' if len(found) == 1 else 's'} shown from {queue}")


def _rate(value: str | None) -> float | None:
    if value is None:
        return None
    number = value.removesuffix("/s")
    try:
        rate = float(number)
    except ValueError:
        rate = 0.0
    if rate <= 0:
        raise ConfigError(f"--rate {value!r}: write messages per second, e.g. 50 or 50/s")
    return rate


@dlq_app.command("replay")
def replay_command(
    queue: QueueArg,
    error_type: ErrorTypeOpt = None,
    consumer: ConsumerOpt = None,
    message_id: MessageIdOpt = None,
    failed_after: AfterOpt = None,
    failed_before: BeforeOpt = None,
    limit: LimitOpt = None,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate", metavar="N/s", help="At most N messages per second.", show_default=False
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be replayed; move nothing.")
    ] = False,
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            metavar="QUEUE",
            help="Send to QUEUE. Default: the queue they failed in (orders.dlq -> orders).",
            show_default=False,
        ),
    ] = None,
    data_file: Annotated[
        Path | None,
        typer.Option(
            "--data-file",
            metavar="FILE",
            help="Replace the body of the one message named by --message-id (edit and retry).",
            show_default=False,
        ),
    ] = None,
    broker_url: BrokerOpt = None,
) -> None:
    """Send messages of QUEUE (orders.dlq, say) back to the queue they failed in
    (orders), through the default exchange:
    attempt 1 again, same ids, error headers dropped. Each copy is confirmed before the
    message leaves the DLQ; messages not selected stay, in order."""
    from framework.cli.dlq_view import failed_at, progress_bar, summary
    from framework.ops import dlq

    with reported():
        settings = server_settings("dlq replay", broker_url=broker_url)
        select = _selection(error_type, consumer, message_id, failed_after, failed_before)
        per_second = _rate(rate)
        target = dlq.replay_target(queue, to)
        body = _read(data_file) if data_file is not None else None
        if dry_run:
            found = _run(settings, lambda t: dlq.show(t, queue, select, limit))
            for parked in found:
                typer.echo(f"{parked.message_id}  {parked.error_type}  {failed_at(parked)}")
            typer.echo(
                f"would replay {len(found)} message{'' if len(found) == 1 else 's'} "
                f"from {queue} to {target} (dry run: nothing moved)"
            )
            return
        provider = provider_from_env(settings.service_name)
        tracing = Tracing(provider, fast=settings.fast_paths) if provider else None
        try:
            with progress_bar(f"replay {queue} -> {target}") as progress:

                async def work(transport: Transport) -> Tally:
                    return await dlq.replay(
                        transport, settings, queue, select, to=to, limit=limit,
                        rate=per_second, body=body, tracing=tracing, progress=progress,
                    )  # fmt: skip

                tally, took = _timed(settings, work)
        finally:
            if provider is not None:
                provider.shutdown()
        typer.echo(summary("replayed", tally, took, f" to {target}"))
        if body is not None and tally.done == 0:
            named = ", ".join(message_id or [])
            raise KaninError(f"no message {named} in {queue}: nothing replayed")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--data-file {path}: {exc.strerror}") from None


@dlq_app.command("purge")
def purge_command(
    queue: QueueArg,
    error_type: ErrorTypeOpt = None,
    consumer: ConsumerOpt = None,
    message_id: MessageIdOpt = None,
    failed_after: AfterOpt = None,
    failed_before: BeforeOpt = None,
    limit: LimitOpt = None,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask: needed when there is no terminal.")
    ] = False,
    broker_url: BrokerOpt = None,
) -> None:
    """Remove messages of QUEUE for good (asks first on a terminal)."""
    from framework.cli.dlq_view import progress_bar, summary
    from framework.ops import dlq

    with reported():
        settings = server_settings("dlq purge", broker_url=broker_url)
        select = _selection(error_type, consumer, message_id, failed_after, failed_before)
        if not yes:
            which = "every message" if select == dlq.EVERYTHING else "the selected messages"
            if not sys.stdin.isatty():
                raise ConfigError(
                    f"purge removes {which} of {queue} for good: add --yes "
                    "(there is no terminal to ask on)"
                )
            if not typer.confirm(f"Remove {which} of {queue} for good?"):
                typer.echo("nothing removed")
                raise typer.Exit(1)
        with progress_bar(f"purge {queue}") as progress:
            tally, took = _timed(
                settings, lambda t: dlq.purge(t, queue, select, limit=limit, progress=progress)
            )
        typer.echo(summary("removed", tally, took))


@dlq_app.command("export")
def export_command(
    queue: QueueArg,
    out: Annotated[
        Path,
        typer.Option("--out", metavar="FILE", help="Write JSON lines here (one per message)."),
    ],
    error_type: ErrorTypeOpt = None,
    consumer: ConsumerOpt = None,
    message_id: MessageIdOpt = None,
    failed_after: AfterOpt = None,
    failed_before: BeforeOpt = None,
    limit: LimitOpt = None,
    remove: Annotated[
        bool,
        typer.Option("--remove", help="Move them out: each leaves the DLQ once written."),
    ] = False,
    broker_url: BrokerOpt = None,
) -> None:
    """Write the messages of QUEUE to a JSON-lines file: headers, properties, and the
    body as text (UTF-8) or base64."""
    from framework.cli.dlq_view import progress_bar, summary
    from framework.ops import dlq

    with reported():
        settings = server_settings("dlq export", broker_url=broker_url)
        select = _selection(error_type, consumer, message_id, failed_after, failed_before)
        try:
            stream = out.open("w", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--out {out}: {exc.strerror}") from None
        with stream, progress_bar(f"export {queue}") as progress:
            tally, took = _timed(
                settings,
                lambda t: dlq.export(
                    t, queue, stream, select, remove=remove, limit=limit, progress=progress
                ),
            )
        verb = "moved" if remove else "exported"
        typer.echo(summary(verb, tally, took, f" to {out}"))

"""``kanin events tail``: watch events go by."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated

import typer

from framework.cli.app import HELP, BrokerOpt, app, on_broker, reported, server_settings
from framework.errors import ConfigError
from framework.transport import Delivery, Transport
from framework.transport.base import StreamOffset

events_app = typer.Typer(
    help="Watch the events that pass through the broker; check event contracts.", **HELP
)
app.add_typer(events_app, name="events")


@events_app.command("tail")
def tail_command(
    exchange: Annotated[str | None, typer.Argument(metavar="EXCHANGE", hidden=True)] = None,
    key: Annotated[
        list[str] | None,
        typer.Option(
            "--key",
            metavar="PATTERN",
            help="Routing-key pattern to watch (topic: order.*, #). Repeatable. Default: #.",
            show_default=False,
        ),
    ] = None,
    stream: Annotated[
        str | None,
        typer.Option(
            "--stream", metavar="STREAM", help="Read this stream instead.", show_default=False
        ),
    ] = None,
    start: Annotated[
        str,
        typer.Option(
            "--from",
            metavar="WHERE",
            help="With --stream: first, last, next, an offset or an ISO 8601 time.",
        ),
    ] = "next",
    count: Annotated[
        int | None,
        typer.Option(
            "--count", min=1, metavar="N", help="Stop after N events.", show_default=False
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    broker_url: BrokerOpt = None,
) -> None:
    """Print the events published to EXCHANGE as they pass, one line each: time,
    exchange and routing key, type and version, ids, trace id and the body. A queue
    of its own gets copies (bound with each --key), so no queue loses a message; it
    goes when this stops (Ctrl-C, or --count). With --stream, reads a stream from
    --from instead."""
    from framework.ops.tail import event_line, event_record, tail

    with reported():
        settings = server_settings("events tail", broker_url=broker_url)
        if (exchange is None) == (stream is None):
            raise ConfigError("name an EXCHANGE to watch, or a --stream to read (not both)")
        offset = _offset(start) if stream is not None else "next"

        def show(delivery: Delivery) -> None:
            line = json.dumps(event_record(delivery), ensure_ascii=False, default=str)
            typer.echo(line if as_json else event_line(delivery))

        async def watch(transport: Transport) -> int:
            return await tail(
                transport, show, exchange=exchange, keys=key or ["#"], stream=stream,
                offset=offset, count=count,
            )  # fmt: skip

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a watch: exit 0
            on_broker(settings, "tail", watch)


def _offset(value: str) -> StreamOffset:
    from framework.ops.tail import parse_offset

    try:
        return parse_offset(value)
    except ValueError:
        raise ConfigError(
            f"--from {value!r}: write first, last, next, an offset or an ISO 8601 time"
        ) from None


@events_app.command("snapshot")
def snapshot_command(
    targets: Annotated[list[str], typer.Argument(metavar="TARGET", hidden=True)],
    out: Annotated[
        Path, typer.Option("--out", metavar="FILE", help="The lock file to write.")
    ] = Path("events.lock.json"),
) -> None:
    """Record every event type and version the service of TARGET (modules or
    module:Class, as for kanin run) consumes and publishes, with its JSON Schema, in
    a lock file to commit."""
    from framework.contracts import snapshot

    with reported():
        contracts = snapshot.collect(targets)
        snapshot.write(contracts, targets, out)
        typer.echo(f"{len(contracts)} event types written to {out}")


@events_app.command("check")
def check_command(
    targets: Annotated[list[str] | None, typer.Argument(metavar="[TARGET]...", hidden=True)] = None,
    lock: Annotated[
        Path | None,
        typer.Option(
            "--against", metavar="FILE", help="Compare TARGET's code with this lock file."
        ),
    ] = None,
    mode: Annotated[
        str, typer.Option("--mode", metavar="MODE", help="backward, forward or full.")
    ] = "backward",
    producer: Annotated[
        Path | None,
        typer.Option(
            "--producer", metavar="FILE", help="A producer's lock file (with --consumer)."
        ),
    ] = None,
    consumer: Annotated[
        Path | None,
        typer.Option(
            "--consumer", metavar="FILE", help="A consumer's lock file (with --producer)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Compare the code of TARGET with a lock file (--against), or a producer's lock
    file with a consumer's (--producer, --consumer). Prints each breaking change (event,
    version, field, rule) and exits 1, else a summary line and exit 0."""
    from framework.contracts import check, snapshot

    with reported():
        if mode not in check.MODES:
            raise ConfigError(f"--mode {mode!r}: write backward, forward or full")
        if producer is not None or consumer is not None:
            if producer is None or consumer is None or targets or lock is not None:
                raise ConfigError(
                    "--producer and --consumer go together, without TARGET or --against"
                )
            findings = list(check.between(snapshot.read(producer), snapshot.read(consumer)))
            where = f"{producer} for {consumer}"
        else:
            if not targets or lock is None:
                raise ConfigError("name TARGET and --against FILE (or --producer and --consumer)")
            expected = snapshot.read(lock)
            findings = list(check.against(snapshot.collect(targets), expected, mode))  # type: ignore[arg-type]
            where = f"{lock} ({mode})"
        breaking = [f for f in findings if f.breaking]
        if as_json:
            typer.echo(json.dumps({"compatible": not breaking, "against": where,
                                   "findings": [f.record() for f in findings]}))  # fmt: skip
        else:
            for finding in findings:
                if finding.breaking or finding.rule == "new version":
                    typer.echo(finding.line())
            verdict = (f"{len(breaking)} breaking change{'' if len(breaking) == 1 else 's'}"
                       if breaking else "compatible")  # fmt: skip
            typer.echo(f"events checked against {where}: {verdict}")
        if breaking:
            raise typer.Exit(1)

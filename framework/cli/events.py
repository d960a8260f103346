"""``kanin events tail``: watch events go by."""

from __future__ import annotations

import contextlib
import json
from typing import Annotated

import typer

from framework.cli.app import HELP, BrokerOpt, app, on_broker, reported, server_settings
from framework.errors import ConfigError
from framework.ops.tail import event_line, event_record, parse_offset, tail
from framework.transport import Delivery, Transport
from framework.transport.base import StreamOffset

events_app = typer.Typer(help="Watch the events that pass through the broker.", **HELP)
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
    try:
        return parse_offset(value)
    except ValueError:
        raise ConfigError(
            f"--from {value!r}: write first, last, next, an offset or an ISO 8601 time"
        ) from None

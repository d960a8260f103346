"""``kanin outbox init|status|relay``: the transactional outbox's tables and relay."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated

import typer

from framework.brokerurl import redact
from framework.cli.app import HELP, BrokerOpt, app, load_settings, reported, server_settings
from framework.cli.run import serve
from framework.errors import ConfigError
from framework.settings import Settings
from framework.worker import Worker

outbox_app = typer.Typer(help="The transactional outbox on PostgreSQL.", **HELP)
app.add_typer(outbox_app, name="outbox")

UrlOpt = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="The outbox database (postgresql://...). Default: $KANIN_OUTBOX_URL.",
        show_default=False,
    ),
]


def _url(settings: Settings) -> str:

    url = settings.outbox_url
    if not url:
        raise ConfigError("name the outbox database: --url postgresql://... or KANIN_OUTBOX_URL")
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            f"the outbox lives in PostgreSQL: a postgresql:// URL, got {redact(url)!r}"
        )
    return url


@outbox_app.command("init")
def init_command(url: UrlOpt = None) -> None:
    """Create the outbox and inbox tables, or bring them up to date (safe to run
    again)."""
    from framework.outbox import tables

    with reported():
        where = _url(load_settings(outbox_url=url))
        asyncio.run(tables.init(where))
        typer.echo(f"outbox tables ready in {where.rsplit('@', 1)[-1]}")


@outbox_app.command("status")
def status_command(
    url: UrlOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Rows pending, the oldest one's age, rows whose last try failed, rows sent and
    kept. Exit 1 while a pending row's last try failed."""
    from framework.outbox import tables

    with reported():
        where = _url(load_settings(outbox_url=url))

        async def read() -> tables.Status:
            conn = await tables.connect(where)
            try:
                await tables.check(conn)
                return await tables.status(conn)
            finally:
                await conn.close()

        found = asyncio.run(read())
        now = datetime.now(UTC)
        age = (now - found.oldest).total_seconds() if found.oldest else None
        report = {
            "pending": found.pending,
            "oldest_pending_seconds": None if age is None else round(age, 3),
            "failing": found.failing,
            "last_error": found.last_error,
            "sent_kept": found.sent,
            "last_sent": found.last_sent.isoformat() if found.last_sent else None,
        }
        if as_json:
            typer.echo(json.dumps(report))
        else:
            oldest = "-" if age is None else f"{age:.1f}s"
            typer.echo(
                f"pending {found.pending} (oldest {oldest}), failing {found.failing}, "
                f"sent and kept {found.sent}"
            )
            if found.last_error:
                typer.echo(f"last error: {found.last_error}")
        if found.failing:
            raise typer.Exit(1)


@outbox_app.command("relay")
def relay_command(
    url: UrlOpt = None,
    http_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            metavar="PORT",
            help="Serve /metrics, /healthz and /readyz. Default: $KANIN_HTTP_PORT, else none.",
            show_default=False,
        ),
    ] = None,
    broker_url: BrokerOpt = None,
) -> None:
    """Send the outbox's rows to the broker until SIGTERM or SIGINT. Several relays
    may share one outbox: each row is sent by one of them."""
    from framework.outbox.service import OutboxRelay

    with reported(quiet_client=False):
        settings = server_settings(
            "outbox relay", outbox_url=url, broker_url=broker_url, http_port=http_port
        )
        where = _url(settings)
        relay = OutboxRelay(where, settings.outbox_retention)
        serve(lambda provider: Worker([], settings, tracer_provider=provider, extensions=[relay]),
              settings)  # fmt: skip

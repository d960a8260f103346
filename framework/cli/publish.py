"""``kanin publish``: send messages from the command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from framework.cli.app import BrokerOpt, app, reported, server_settings
from framework.errors import ConfigError
from framework.publisher import Publisher, envelope_for
from framework.tracing import provider_from_env


def _body(data: str) -> bytes:
    if data.startswith("@"):
        try:
            raw = Path(data[1:]).read_bytes()
        except OSError as exc:
            raise ConfigError(f"--data {data}: {exc.strerror}") from None
    else:
        raw = data.encode()
    try:
        json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"--data is not JSON: {exc}") from None
    return raw


def _headers(items: list[str]) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--header {item!r}: write key=value")
        headers[key] = int(value) if value.lstrip("-").isdigit() else value
    return headers


@app.command("publish")
def publish(
    exchange: Annotated[str, typer.Argument(metavar="EXCHANGE", hidden=True)],
    routing_key: Annotated[str, typer.Argument(metavar="ROUTING_KEY", hidden=True)],
    data: Annotated[
        str,
        typer.Option("--data", "-d", metavar="JSON", help="JSON body, or @file to read it."),
    ],
    type_: Annotated[
        str | None,
        typer.Option("--type", metavar="TYPE", help="Event type (AMQP 'type' property)."),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option("--header", "-H", metavar="KEY=VALUE", help="A header; repeatable."),
    ] = None,
    count: Annotated[int, typer.Option(min=1, metavar="N", help="Publish this many copies.")] = 1,
    broker_url: BrokerOpt = None,
) -> None:
    """Publish a JSON message to EXCHANGE ('' for the default exchange) with
    ROUTING_KEY, confirmed and mandatory (unroutable: exit 1).

    With OTEL_EXPORTER_OTLP_ENDPOINT set, each message starts a trace (docs/tracing.md).
    """
    with reported():
        settings = server_settings("publish", broker_url=broker_url)
        body = _body(data)
        extra = _headers(header or [])
        provider = provider_from_env(settings.service_name)

        async def send() -> list[str]:
            async with Publisher(settings, tracer_provider=provider) as publisher:
                batch = [
                    envelope_for(
                        type_, 1 if type_ else None, app_id=settings.service_name, headers=extra
                    )
                    for _ in range(count)
                ]

                async def one(properties: Any) -> None:
                    with publisher.tracing.send(exchange, routing_key, properties, len(body)):
                        await publisher.publish_raw(exchange, routing_key, body, properties)

                await asyncio.gather(*(one(p) for p in batch))
                return [str(p.message_id) for p in batch]

        try:
            ids = asyncio.run(send())
        finally:
            if provider is not None:
                provider.shutdown()
        where = f"exchange {exchange!r}" if exchange else "the default exchange"
        typer.echo(
            f"published {count} message{'s' if count > 1 else ''} to {where} [{routing_key}]"
        )
        if count == 1:
            typer.echo(f"message_id {ids[0]}")

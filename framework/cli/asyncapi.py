"""``kanin asyncapi``: the service's AsyncAPI 3.0 document."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from framework.cli.app import TitleOpt, TopologyOpt, app, reported
from framework.cli.guards import describe
from framework.settings import strip_password


class Format(StrEnum):
    yaml = "yaml"
    json = "json"


@app.command("asyncapi")
def asyncapi_command(
    targets: Annotated[list[str], typer.Argument(metavar="TARGET", hidden=True)],
    topology: TopologyOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            metavar="FILE",
            help="Write here. Default: standard output.",
            show_default=False,
        ),
    ] = None,
    form: Annotated[
        Format,
        typer.Option("--format", case_sensitive=False, metavar="FORMAT", help="yaml or json."),
    ] = Format.yaml,
    title: TitleOpt = None,
) -> None:
    """The AsyncAPI 3.0 document of the service made of TARGET (modules or module:Class,
    as for kanin run) and its topology: servers, channels with AMQP bindings (exchanges,
    queues, retry and dead-letter queues), receive and send operations, and each event's
    payload schema and headers."""
    import yaml

    from framework.contracts import asyncapi

    with reported():
        settings, consumers, contracts, model = describe(targets, topology)
        classes = {n: c.source for n, c in contracts.items() if c.source is not None}
        document = asyncapi.document(
            title=title or settings.service_name, consumers=consumers, classes=classes,
            contracts=contracts, topology=model,
            broker_url=strip_password(settings.broker_url)[0],
        )  # fmt: skip
        text = (
            json.dumps(document, indent=2) + "\n"
            if form is Format.json
            else yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
        )
        if out is None:
            typer.echo(text, nl=False)
        else:
            out.write_text(text, encoding="utf-8")
            typer.echo(f"AsyncAPI {asyncapi.VERSION} document written to {out}")

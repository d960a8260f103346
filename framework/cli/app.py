"""The root ``kanin`` command and what every subcommand shares: settings and error reporting."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version as package_version
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from framework.errors import ConfigError, KaninError, TopologyError
from framework.settings import Settings

app = typer.Typer(
    name="kanin",
    help="kanin: RabbitMQ workers with YAML topology, broker-side retries and tracing.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker-url",
        "--broker",
        help="AMQP URL, or memory:// for the embedded broker (kanin run). "
        "Default: $KANIN_BROKER_URL, else amqp://guest:guest@127.0.0.1:5672/.",
        show_default=False,
    ),
]


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and ``.env``; errors never echo the values given."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = "KANIN_" + "_".join(str(p) for p in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{name}: {message}" if error["loc"] else message)
        raise ConfigError("invalid settings:\n  " + "\n  ".join(lines)) from None


def server_settings(command: str, **overrides: Any) -> Settings:
    """Settings for a command that talks to a RabbitMQ server, which memory:// is not."""
    settings = load_settings(**overrides)
    if settings.broker_url.startswith("memory://"):
        raise ConfigError(
            f"kanin {command} needs a RabbitMQ broker (amqp:// or amqps://): memory:// is "
            "the embedded broker of one process (kanin run, kanin demo)"
        )
    return settings


@contextmanager
def reported(quiet_client: bool = True) -> Iterator[None]:
    """Turn kanin's errors into a message on stderr and the matching exit code."""
    if quiet_client:  # the AMQP client logs failures these commands report themselves
        for name in ("aio_pika", "aiormq"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    except TopologyError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        count = len(exc.problems)
        typer.echo(f"invalid topology: {count} problem{'s' if count > 1 else ''}", err=True)
        raise typer.Exit(exc.exit_code) from None
    except KaninError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"kanin {package_version('kanin')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_show_version, is_eager=True
        ),
    ] = False,
) -> None:
    """kanin: RabbitMQ workers with YAML topology, broker-side retries and tracing."""


def main() -> None:
    app()

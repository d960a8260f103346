"""The root ``kanin`` command and what every subcommand shares: settings and error reporting."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

from framework.errors import ConfigError, KaninError, TopologyError
from framework.settings import Settings

if TYPE_CHECKING:
    from framework.transport import Transport

T = TypeVar("T")

# Plain help (no boxes, no <type> labels) that reads well in 80 columns; -h as --help.
HELP: dict[str, Any] = {
    "no_args_is_help": True,
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"], "max_content_width": 80},
}

app = typer.Typer(
    name="kanin",
    help="kanin: RabbitMQ workers with YAML topology, broker-side retries and tracing.",
    pretty_exceptions_enable=False,
    **HELP,
)

TopologyOpt = Annotated[
    Path | None,
    typer.Option(
        "--topology",
        metavar="FILE",
        help="Topology file. Default: $KANIN_TOPOLOGY, else config/topology.yaml.",
        show_default=False,
    ),
]
TitleOpt = Annotated[
    str | None,
    typer.Option(
        "--title", metavar="TEXT", help="Default: $KANIN_SERVICE_NAME.", show_default=False
    ),
]
BrokerOpt = Annotated[
    str | None,
    typer.Option(
        "--broker-url",
        "--broker",
        metavar="URL",
        help="AMQP URL, or memory:// for the embedded broker (kanin run). "
        "Default: $KANIN_BROKER_URL, else amqp://guest:guest@127.0.0.1:5672/.",
        show_default=False,
    ),
]


def load_settings(**overrides: Any) -> Settings:
    """Settings from the flags given (``overrides``), the environment and ``.env``. An
    invalid value is one line naming its flag or variable and the reason; secrets in the
    value are never echoed."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = "_".join(str(p) for p in error["loc"])
            name = "--" + field.replace("_", "-") if field in given else f"KANIN_{field.upper()}"
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{name}: {message}" if error["loc"] else message)
        raise ConfigError("; ".join(lines)) from None


def server_settings(command: str, **overrides: Any) -> Settings:
    """Settings for a command that talks to a RabbitMQ server, which memory:// is not."""
    settings = load_settings(**overrides)
    if settings.broker_url.startswith("memory://"):
        raise ConfigError(
            f"kanin {command} needs a RabbitMQ broker (amqp:// or amqps://): memory:// is "
            "the embedded broker of one process (kanin run, kanin demo)"
        )
    return settings


def on_broker(settings: Settings, name: str, work: Callable[[Transport], Awaitable[T]]) -> T:
    """Run ``work`` on a transport of its own (connection ``<service>-<name>``), connected
    at once (one round over the hosts) and closed afterwards."""
    from framework.transport import open_transport

    async def main() -> T:
        transport = open_transport(settings, f"{settings.service_name}-{name}")
        try:
            await transport.connect(0)
            return await work(transport)
        finally:
            await transport.close()

    return asyncio.run(main())


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
            typer.echo(f"error: {problem}", err=True)
        if len(exc.problems) > 1:
            typer.echo(f"invalid topology: {len(exc.problems)} problems", err=True)
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
    """The console script. A command line the parser refuses (an unknown flag, a bad value)
    is one line on stderr and exit 2, like kanin's own errors."""
    try:
        code = app(standalone_mode=False)
    except Exception as exc:
        # the parser's errors (click's, or typer's own copy of them) carry these two
        if not (hasattr(exc, "exit_code") and hasattr(exc, "format_message")):
            raise
        if type(exc).__name__ != "NoArgsIsHelpError":  # that one printed the help already
            context = getattr(exc, "ctx", None)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            message = str(exc.format_message()).replace("Value error, ", "")
            typer.echo(f"error: {' '.join(message.split())}{hint}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)

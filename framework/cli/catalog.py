"""``kanin docs``: the event catalog, one static HTML page."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Annotated

import typer

from framework.cli.app import TitleOpt, TopologyOpt, app, reported
from framework.cli.guards import describe
from framework.errors import ConfigError
from framework.topology import Topology


def diagram(topology: Topology, consumers: list[tuple[str, str]]) -> tuple[str, bool]:
    """The topology as an SVG drawn by Graphviz's ``dot`` (True), or as Mermaid source
    (False) where ``dot`` is not installed or fails."""
    from framework.ops.graph import build, render

    graph = build(topology, consumers)
    dot = shutil.which("dot")
    if dot is not None:
        drawn = subprocess.run(
            [dot, "-Tsvg"], input=render(graph, "dot"), capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        if drawn.returncode == 0 and "<svg" in drawn.stdout:
            return drawn.stdout[drawn.stdout.index("<svg") :], True
    return render(graph, "mermaid"), False


@app.command("docs")
def docs_command(
    targets: Annotated[list[str], typer.Argument(metavar="TARGET", hidden=True)],
    out: Annotated[
        Path,
        typer.Option("--out", metavar="DIR", help="Folder of the page (index.html)."),
    ] = Path("site"),
    topology: TopologyOpt = None,
    title: TitleOpt = None,
) -> None:
    """Write the event catalog of the service of TARGET (modules or module:Class, as for
    kanin run) to DIR/index.html: each event's fields, an example body, who publishes
    and who consumes it and on which queues; the topology drawn; each queue's retry and
    dead-letter policy. One page, no network needed to view it."""
    from framework.contracts import catalog

    with reported():
        settings, consumers, contracts, model = describe(targets, topology)
        drawn, is_svg = diagram(model, [(c.__name__, c.queue) for c in consumers])
        text = catalog.page(
            title=title or settings.service_name, contracts=contracts, consumers=consumers,
            topology=model, diagram=drawn, diagram_is_svg=is_svg,
        )  # fmt: skip
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "index.html").write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--out {out}: {exc.strerror}") from None
        typer.echo(f"event catalog written to {out / 'index.html'}: {len(contracts)} events")

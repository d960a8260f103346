"""A topology drawn: exchanges -> bindings -> queues -> consumer classes, with each
queue's wait queues and DLQ as a side path. Mermaid (GitHub renders it in Markdown) or
Graphviz DOT."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from framework.topology.expand import Declarations, expand
from framework.topology.model import Topology
from framework.units import millis_text

Format = Literal["mermaid", "dot"]
Shape = Literal["exchange", "queue", "wait", "dlq", "consumer"]


@dataclass
class Graph:
    nodes: dict[str, tuple[str, Shape]] = field(default_factory=dict)  # id -> label, shape
    edges: list[tuple[str, str, str, bool]] = field(default_factory=list)  # from, to, label, side
    _ids: dict[tuple[Shape, str], str] = field(default_factory=dict)

    def node(self, shape: Shape, name: str, label: str | None = None) -> str:
        key = (shape, name)
        if key not in self._ids:
            base = {"exchange": "x", "queue": "q", "wait": "w", "dlq": "d", "consumer": "c"}[shape]
            ident = f"{base}_{re.sub(r'[^0-9A-Za-z]+', '_', name).strip('_')}"
            while ident in self.nodes:
                ident += "_"
            self._ids[key] = ident
            self.nodes[ident] = (label or name, shape)
        return self._ids[key]


def build(topology: Topology, consumers: Sequence[tuple[str, str]] = ()) -> Graph:
    """The graph of ``topology``; ``consumers``: (class name, queue) pairs."""
    decls: Declarations = expand(topology)
    graph = Graph()
    for x in decls.exchanges:
        graph.node("exchange", x.name, f"{x.name} ({x.type})")
    for x in decls.exchanges:
        ae = x.arguments.get("alternate-exchange")
        if ae:
            graph.edges.append(
                (graph.node("exchange", x.name), graph.node("exchange", ae), "unrouted", True)
            )
    for spec in topology.queues:  # queues in the file's order, streams marked
        graph.node("queue", spec.name, f"{spec.name} (stream)" if spec.type == "stream" else None)
    for b in decls.bindings:
        source = graph.node("exchange", b.source)
        shape: Shape = "queue" if b.destination_type == "queue" else "exchange"
        label = b.routing_key
        if "x-match" in b.arguments:
            headers = {k: v for k, v in b.arguments.items() if k != "x-match"}
            label = f"{b.arguments['x-match']} {headers}"
        graph.edges.append((source, graph.node(shape, b.destination), label, False))
    for spec in topology.queues:
        queue = graph.node("queue", spec.name)
        if spec.retry is not None and spec.retry.attempts > 1:
            delays = spec.retry.delays_ms()
            span = (
                millis_text(delays[0])
                if len(set(delays)) == 1
                else f"{millis_text(delays[0])}..{millis_text(delays[-1])}"
            )
            last = f"{spec.name}.retry.{len(delays)}"
            name = (
                spec.wait_queue(1) if len(delays) == 1 else f"{spec.wait_queue(1)}..{len(delays)}"
            )
            wait = graph.node("wait", last, f"{name} (wait {span})")
            graph.edges.append((queue, wait, "retry", True))
            graph.edges.append((wait, queue, "back", True))
        if spec.dead_letter:
            graph.edges.append((queue, graph.node("dlq", spec.dlq), "dead letters", True))
    for name, queue_name in consumers:
        graph.edges.append(
            (graph.node("queue", queue_name), graph.node("consumer", name), "", False)
        )
    return graph


_MERMAID = {
    "exchange": ('{{"', '"}}'),
    "queue": ('[["', '"]]'),
    "wait": ('[/"', '"/]'),
    "dlq": ('[("', '")]'),
    "consumer": ('(["', '"])'),
}
_DOT = {
    "exchange": "shape=hexagon",
    "queue": "shape=box",
    "wait": "shape=box, style=dashed",
    "dlq": "shape=cylinder",
    "consumer": "shape=oval, style=filled, fillcolor=lightgrey",
}


def render(graph: Graph, form: Format = "mermaid") -> str:
    if form == "dot":
        return _dot(graph)
    lines = ["flowchart LR"]
    for ident, (label, shape) in graph.nodes.items():
        left, right = _MERMAID[shape]
        lines.append(f"  {ident}{left}{_mermaid_text(label)}{right}")
    for source, target, label, side in graph.edges:
        text = f'|"{_mermaid_text(label)}"|' if label else ""
        arrow = "-.->" if side else "-->"
        lines.append(f"  {source} {arrow}{text} {target}")
    return "\n".join(lines) + "\n"


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;")


def _dot(graph: Graph) -> str:
    lines = ["digraph topology {", "  rankdir=LR;"]
    for ident, (label, shape) in graph.nodes.items():
        lines.append(f"  {ident} [label={_dot_text(label)}, {_DOT[shape]}];")
    for source, target, label, side in graph.edges:
        attributes = [f"label={_dot_text(label)}"] if label else []
        if side:
            attributes.append("style=dashed")
        suffix = f" [{', '.join(attributes)}]" if attributes else ""
        lines.append(f"  {source} -> {target}{suffix};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_text(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'

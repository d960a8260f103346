"""Compare what the file declares with what the broker holds (read by the management API)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from framework.errors import Difference
from framework.management import LiveTopology, binding_key
from framework.topology.expand import BindingDecl, Declarations, ExchangeDecl, QueueDecl

Decl = ExchangeDecl | QueueDecl | BindingDecl
Status = Literal["create", "exists", "differs", "stale"]
UNSET = "<not set>"


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _compare(props: dict[str, tuple[Any, Any]]) -> list[Difference]:
    return [
        Difference(name, live, want)
        for name, (live, want) in props.items()
        if not _same(live, want)
    ]


def _compare_arguments(live: dict[str, Any], want: dict[str, Any]) -> list[Difference]:
    diffs = []
    for key in sorted(set(live) | set(want)):
        a, b = live.get(key, UNSET), want.get(key, UNSET)
        if not _same(a, b):
            diffs.append(Difference(key, a, b))
    return diffs


def exchange_differences(decl: ExchangeDecl, live: dict[str, Any]) -> list[Difference]:
    props = {
        "type": (live.get("type"), decl.type),
        "durable": (live.get("durable"), decl.durable),
        "auto_delete": (live.get("auto_delete"), decl.auto_delete),
        "internal": (live.get("internal"), decl.internal),
    }
    return _compare(props) + _compare_arguments(live.get("arguments") or {}, decl.arguments)


def queue_differences(decl: QueueDecl, live: dict[str, Any]) -> list[Difference]:
    props = {
        "durable": (live.get("durable"), decl.durable),
        "auto_delete": (live.get("auto_delete"), decl.auto_delete),
    }
    args = dict(live.get("arguments") or {})
    args.setdefault("x-queue-type", live.get("type", "classic"))
    want = dict(decl.arguments)
    want.setdefault("x-queue-type", "classic")
    return _compare(props) + _compare_arguments(args, want)


@dataclass(frozen=True)
class Step:
    status: Status
    decl: Decl
    differences: tuple[Difference, ...] = ()


def plan(decls: Declarations, live: LiveTopology) -> list[Step]:
    """What ``apply`` would do to each object, given the broker's current state."""
    steps: list[Step] = []
    for x in decls.exchanges:
        found = live.exchanges.get(x.name)
        steps.append(_step(x, None if found is None else exchange_differences(x, found)))
    for q in decls.queues:
        found = live.queues.get(q.name)
        steps.append(_step(q, None if found is None else queue_differences(q, found)))
    for b in decls.bindings:
        key = binding_key(b.source, b.destination, b.destination_type, b.routing_key, b.arguments)
        steps.append(_step(b, [] if key in live.bindings else None))
    return steps


def stale(decls: Declarations, live: LiveTopology, owns: Sequence[str] = ()) -> list[Step]:
    """Objects on the broker that the file owns and no longer declares.

    The file owns its queues' generated queues (``<queue>.dlq``, ``<queue>.retry.<n>``),
    every exchange and queue under a prefix it ``owns``, and the bindings between objects
    it owns whose source is one of its exchanges. Bindings from its exchanges to queues
    it does not own are other services' (they subscribe with bindings of their own) and
    are left alone.
    """
    exchanges = {x.name for x in decls.exchanges}
    queues = {q.name for q in decls.queues}
    generated = re.compile(
        "|".join(
            rf"{re.escape(q.name)}\.(dlq|retry\.[0-9]+)" for q in decls.queues if q.role == "work"
        )
        or "(?!)"
    )

    def prefixed(name: str) -> bool:
        return any(name.startswith(p) for p in owns)

    def owned_queue(name: str) -> bool:
        return name in queues or prefixed(name) or generated.fullmatch(name) is not None

    def owned_exchange(name: str) -> bool:
        return name in exchanges or prefixed(name)

    steps: list[Step] = []
    for name, x in sorted(live.exchanges.items()):
        if name and not name.startswith("amq.") and prefixed(name) and name not in exchanges:
            steps.append(Step("stale", _live_exchange(name, x)))
    for name, q in sorted(live.queues.items()):
        if name not in queues and owned_queue(name):
            steps.append(Step("stale", _live_queue(name, q)))
    declared = {
        binding_key(b.source, b.destination, b.destination_type, b.routing_key, b.arguments)
        for b in decls.bindings
    }
    for key in sorted(live.bindings - declared):
        source, destination, kind, routing_key, arguments = key
        owned = owned_queue(destination) if kind == "queue" else owned_exchange(destination)
        if source and owned_exchange(source) and owned:
            to: Literal["queue", "exchange"] = "queue" if kind == "queue" else "exchange"
            decl = BindingDecl(source, destination, to, routing_key, json.loads(arguments))
            steps.append(Step("stale", decl))
    return steps


def _live_exchange(name: str, live: dict[str, Any]) -> ExchangeDecl:
    return ExchangeDecl(
        name,
        live.get("type", "direct"),
        bool(live.get("durable", True)),
        bool(live.get("auto_delete", False)),
        bool(live.get("internal", False)),
        dict(live.get("arguments") or {}),
    )


def _live_queue(name: str, live: dict[str, Any]) -> QueueDecl:
    arguments = dict(live.get("arguments") or {})
    arguments.setdefault("x-queue-type", live.get("type", "classic"))
    durable, auto_delete = bool(live.get("durable", True)), bool(live.get("auto_delete", False))
    return QueueDecl(name, durable, auto_delete, arguments)


def _step(decl: Decl, differences: list[Difference] | None) -> Step:
    if differences is None:
        return Step("create", decl)
    return Step("differs" if differences else "exists", decl, tuple(differences))


def describe_difference(kind: str, name: str, diff: Difference, where: str) -> str:
    """One line: the argument, the broker's value, and the wanted value with where it came
    from (``config/topology.yaml:12``, a consumer class attribute)."""
    return (
        f"{kind} {name!r}: {diff.argument} is {_show(diff.broker)} on the broker "
        f"but {_show(diff.file)} in {where}"
    )


def _show(value: Any) -> str:
    return value if value == UNSET else repr(value)

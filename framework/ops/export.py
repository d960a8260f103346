"""The live broker's topology as a kanin YAML file: an existing system adopted in one step.

Each queue's generated recovery queues are recognised and folded back into its
``retry:`` and ``dead_letter`` keys, so the file declares exactly what the broker holds
and ``kanin topology plan`` reports it unchanged. What a kanin file cannot express (a
stream, a dead-letter target of another shape, wait queues no retry policy produces)
is left out and listed, never guessed at.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from framework.management import LiveTopology
from framework.retry import RetryPolicy
from framework.topology.model import QUEUE_KEYS
from framework.units import millis_text

_WAIT = re.compile(r"(?P<queue>.+)\.retry\.(?P<n>[1-9][0-9]*)")
_AGE = re.compile(r"([0-9]+)([Dhms])")  # RabbitMQ's x-max-age; Y and M have no fixed length
_SIMPLE = {
    "x-max-length": "max_length",
    "x-max-length-bytes": "max_length_bytes",
    "x-overflow": "overflow",
    "x-delivery-limit": "delivery_limit",
    "x-max-priority": "max_priority",
}


@dataclass
class Exported:
    document: dict[str, Any]
    skipped: list[str] = field(default_factory=list)  # "queue x: why"

    def yaml(self) -> str:
        return yaml.safe_dump(self.document, sort_keys=False, allow_unicode=True)


def export_topology(live: LiveTopology, prefix: str = "") -> Exported:
    """The objects of ``live`` (those whose names start with ``prefix``) as a topology."""
    skipped: list[str] = []
    exchanges = [
        _exchange(name, x)
        for name, x in sorted(live.exchanges.items())
        if name and not name.startswith("amq.") and name.startswith(prefix)
    ]
    queues = {
        name: q
        for name, q in live.queues.items()
        if name.startswith(prefix) and not q.get("exclusive") and not name.startswith("amq.")
    }
    generated: set[str] = set()
    specs = []
    for name in sorted(queues):
        if _is_generated(name, queues):
            continue
        spec, used, problem = _queue(name, queues)
        if problem:
            skipped.append(f"queue {name}: {problem}")
            continue
        specs.append(spec)
        generated |= used
    for name in sorted(set(queues) - generated - {s["name"] for s in specs}):
        if _is_generated(name, queues):
            skipped.append(f"queue {name}: a wait or dead-letter queue of no exported queue")
    names = {s["name"] for s in specs} | {x["name"] for x in exchanges}
    bindings = []
    for source, destination, kind, routing_key, arguments in sorted(live.bindings):
        if not source or destination not in names:
            continue
        if not (source.startswith(prefix) or destination.startswith(prefix)):
            continue
        bindings.append(_binding(source, destination, kind, routing_key, json.loads(arguments)))
        if source not in names:
            bindings[-1]["external"] = True
    document: dict[str, Any] = {"exchanges": exchanges, "queues": specs, "bindings": bindings}
    return Exported({k: v for k, v in document.items() if v}, skipped)


def _is_generated(name: str, queues: dict[str, Any]) -> bool:
    wait = _WAIT.fullmatch(name)
    if wait is not None and wait["queue"] in queues:
        return True
    return name.endswith(".dlq") and name.removesuffix(".dlq") in queues


def _exchange(name: str, live: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "type": live.get("type", "direct")}
    _flags(spec, live)
    if live.get("internal"):
        spec["internal"] = True
    arguments = dict(live.get("arguments") or {})
    if "alternate-exchange" in arguments:
        spec["alternate_exchange"] = arguments.pop("alternate-exchange")
    if arguments:
        spec["arguments"] = arguments
    return spec


def _flags(spec: dict[str, Any], live: dict[str, Any]) -> None:
    if not live.get("durable", True):
        spec["durable"] = False
    if live.get("auto_delete"):
        spec["auto_delete"] = True


def _queue(name: str, queues: dict[str, Any]) -> tuple[dict[str, Any], set[str], str | None]:
    """The queue's spec, the generated queues folded into it, or why it cannot be one."""
    live = queues[name]
    arguments = dict(live.get("arguments") or {})
    kind = arguments.pop("x-queue-type", live.get("type", "classic"))
    if kind not in ("classic", "quorum", "stream"):
        return {}, set(), f"type {kind} cannot be declared by a kanin file"
    spec: dict[str, Any] = {"name": name}
    if kind != "classic":
        spec["type"] = kind
    _flags(spec, live)
    used: set[str] = set()
    exchange = arguments.pop("x-dead-letter-exchange", None)
    key = arguments.pop("x-dead-letter-routing-key", None)
    if exchange is None and key is None:
        if kind != "stream":  # a stream has no dead letters anyway
            spec["dead_letter"] = False
    elif (exchange, key) != ("", f"{name}.dlq"):
        return {}, set(), f"dead-letters to ({exchange!r}, {key!r}), not to its own {name}.dlq"
    else:
        used.add(f"{name}.dlq")
    for argument, value in sorted(arguments.items()):
        if argument == "x-message-ttl":
            spec["message_ttl"] = millis_text(int(value))
        elif argument == "x-expires":
            spec["expires"] = millis_text(int(value))
        elif argument == "x-max-age":
            age = _AGE.fullmatch(str(value))
            if age is None:
                return {}, set(), f"x-max-age {value!r} has no equivalent in a kanin file"
            spec["max_age"] = f"{age[1]}{age[2].lower()}"
        elif argument == "x-stream-max-segment-size-bytes":
            spec["segment_bytes"] = value
        elif argument == "x-single-active-consumer":
            spec["single_active_consumer"] = bool(value)
        elif argument in _SIMPLE:
            spec[_SIMPLE[argument]] = value
        elif argument in QUEUE_KEYS:
            return {}, set(), f"argument {argument} has no equivalent in a kanin file"
        else:
            spec.setdefault("arguments", {})[argument] = value
    retry, waits, problem = _retry(name, queues)
    if problem:
        return {}, set(), problem
    if retry is not None:
        spec["retry"] = retry
    return spec, used | waits, None


def _retry(name: str, queues: dict[str, Any]) -> tuple[dict[str, Any] | None, set[str], str | None]:
    """The retry policy whose wait queues ``<name>.retry.<n>`` are on the broker."""
    waits: list[int] = []
    while f"{name}.retry.{len(waits) + 1}" in queues:
        wait = queues[f"{name}.retry.{len(waits) + 1}"].get("arguments") or {}
        if (wait.get("x-dead-letter-exchange"), wait.get("x-dead-letter-routing-key")) != (
            "",
            name,
        ) or not isinstance(wait.get("x-message-ttl"), int):
            return None, set(), f"{name}.retry.{len(waits) + 1} is not a wait queue kanin makes"
        waits.append(wait["x-message-ttl"])
    if not waits:
        return None, set(), None
    names = {f"{name}.retry.{n}" for n in range(1, len(waits) + 1)}
    for candidate in _policies(waits):
        if RetryPolicy(**candidate).delays_ms() == waits:
            return candidate, names, None
    return None, set(), f"its wait queues ({waits} ms) follow no retry policy"


def _policies(waits: list[int]) -> list[dict[str, Any]]:
    attempts = len(waits) + 1
    first, last = waits[0], waits[-1]
    fixed = {"attempts": attempts, "backoff": "fixed", "initial": millis_text(first)}
    if len(waits) == 1 or len(set(waits)) == 1:
        return [fixed]
    multiplier = waits[1] / waits[0]
    return [
        {
            "attempts": attempts,
            "backoff": "exponential",
            "initial": millis_text(first),
            "multiplier": round(multiplier, 6),
            "max": millis_text(last),
        }
    ]


def _binding(
    source: str, destination: str, kind: str, routing_key: str, arguments: dict[str, Any]
) -> dict[str, Any]:
    spec: dict[str, Any] = {"exchange": source}
    spec["queue" if kind == "queue" else "to_exchange"] = destination
    if routing_key:
        spec["routing_key"] = routing_key
    match = arguments.pop("x-match", None)
    if match is not None:
        spec["match"] = match
        spec["headers"] = {k: v for k, v in arguments.items() if not k.startswith("x-")}
        arguments = {k: v for k, v in arguments.items() if k.startswith("x-")}
    if arguments:
        spec["arguments"] = arguments
    return spec

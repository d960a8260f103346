"""AMQP 0-9-1 routing as RabbitMQ does it: which queues a message reaches.

Exchange types ``direct``, ``fanout``, ``topic`` (``*`` one word, ``#`` zero or more) and
``headers`` (``x-match`` ``all``/``any``, ``x-`` keys ignored); the default exchange
(routing key = queue name); exchange-to-exchange bindings; an ``alternate-exchange``
for the messages an exchange itself finds no destination for.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Binding:
    destination: str  # a queue, or an exchange when ``to_exchange``
    routing_key: str
    arguments: dict[str, Any]
    to_exchange: bool = False


@dataclass
class Exchange:
    name: str
    type: str
    arguments: dict[str, Any] = field(default_factory=dict)
    bindings: list[Binding] = field(default_factory=list)

    def matches(self, binding: Binding, routing_key: str, headers: Mapping[str, Any]) -> bool:
        if self.type == "fanout":
            return True
        if self.type == "direct":
            return binding.routing_key == routing_key
        if self.type == "topic":
            return topic_matches(binding.routing_key, routing_key)
        wanted = {k: v for k, v in binding.arguments.items() if not k.startswith("x-")}
        found = [k in headers and headers[k] == v for k, v in wanted.items()]
        if binding.arguments.get("x-match", "all") == "any":
            return any(found)
        return all(found)


def topic_matches(pattern: str, key: str) -> bool:
    """RabbitMQ's topic rule: ``*`` is exactly one word, ``#`` zero or more."""
    return _words_match(tuple(pattern.split(".")), tuple(key.split(".")))


def _words_match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    if pattern[0] == "#":
        return _words_match(pattern[1:], words) or (
            bool(words) and _words_match(pattern, words[1:])
        )
    if words and pattern[0] in ("*", words[0]):
        return _words_match(pattern[1:], words[1:])
    return False


def route(
    exchanges: Mapping[str, Exchange],
    queues: Container[str],
    exchange: str,
    routing_key: str,
    headers: Mapping[str, Any],
) -> list[str]:
    """The names of the queues a message published to ``exchange`` reaches, each once."""
    found: dict[str, None] = {}
    _route(exchanges, queues, exchanges[exchange], routing_key, headers, found, set())
    return list(found)


def _route(
    exchanges: Mapping[str, Exchange],
    queues: Container[str],
    exchange: Exchange,
    key: str,
    headers: Mapping[str, Any],
    found: dict[str, None],
    seen: set[str],
) -> None:
    if exchange.name in seen:
        return
    seen.add(exchange.name)
    matched = False  # by this exchange itself: its alternate is for when it finds nothing
    if exchange.name == "" and key in queues:
        found[key] = None
        matched = True
    for binding in exchange.bindings:
        if not exchange.matches(binding, key, headers):
            continue
        if binding.to_exchange:
            if binding.destination in exchanges:
                matched = True
                target = exchanges[binding.destination]
                _route(exchanges, queues, target, key, headers, found, seen)
        elif binding.destination in queues:
            matched = True
            found[binding.destination] = None
    alternate = str(exchange.arguments.get("alternate-exchange", ""))
    if not matched and alternate and alternate in exchanges:
        _route(exchanges, queues, exchanges[alternate], key, headers, found, seen)

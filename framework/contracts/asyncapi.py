"""An AsyncAPI 3.0 document of a service, from its code and topology.

Servers from the broker URL (never its password); a channel per exchange of the topology
(AMQP binding ``is: routingKey``) and per queue the service consumes, with its retry and
dead-letter queues (``is: queue``); a ``receive`` operation per consumer class and event
type, a ``send`` operation per event the service publishes; a message per event type and
version, with the payload's JSON Schema (pydantic's) and the headers of kanin's wire
contract.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import unquote

from framework.brokerurl import BrokerUrl
from framework.consumer import Consumer
from framework.contracts.snapshot import Contract
from framework.events import Event
from framework.topology.expand import recovery_queues
from framework.topology.model import QueueSpec, Topology

VERSION = "3.0.0"
AMQP_BINDING = "0.3.0"
REF = "#/components/schemas/{model}"


def _id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", text)


def headers(version: int) -> dict[str, Any]:
    """The wire contract's headers, as a JSON Schema."""
    text = {"type": "string"}
    return {
        "type": "object",
        "properties": {
            "x-event-version": {"type": "integer", "const": version},
            "x-attempt": {"type": "integer", "minimum": 1,
                          "description": "1 on first delivery, raised by each delayed retry"},
            "x-idempotency-key": {**text, "description": "the key a consumer handles it once by"},
            "x-causation-id": {**text, "description": "message_id of the event that caused it"},
            "traceparent": {**text, "description": "W3C trace context"},
            "tracestate": text,
            "baggage": text,
        },
        "required": ["x-event-version"],
    }  # fmt: skip


def _schema(cls: type[Event], schemas: dict[str, Any]) -> dict[str, Any]:
    """A $ref to ``cls``'s payload schema; it and its nested models go to ``schemas``."""
    schema = cls.model_json_schema(ref_template=REF)
    for name, nested in schema.pop("$defs", {}).items():
        schemas.setdefault(name, nested)
    schemas.setdefault(cls.__name__, schema)
    return {"$ref": REF.format(model=cls.__name__)}


def document(
    *,
    title: str,
    consumers: Sequence[type[Consumer]],
    classes: Mapping[str, type[Event]],
    contracts: Mapping[str, Contract],
    topology: Topology,
    broker_url: str,
) -> dict[str, Any]:
    """The AsyncAPI document. ``classes`` and ``contracts``: the service's event classes
    and what it does with each, by type (``snapshot.collect``)."""
    url = BrokerUrl.parse(broker_url)
    host, port = url.hosts[0] if url.hosts else ("localhost", None)
    port = port or (5671 if url.scheme == "amqps" else 5672)
    vhost = unquote(url.path.lstrip("/")) or "/"
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    message_ids: dict[str, str] = {}
    for name, cls in sorted(classes.items()):
        mid = _id(f"{name}.v{cls.event_version}")
        message_ids[name] = mid
        messages[mid] = {
            "name": name,
            "title": f"{cls.__name__} (version {cls.event_version})",
            "summary": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else name,
            "contentType": "application/json",
            "headers": headers(cls.event_version),
            "payload": _schema(cls, schemas),
            "bindings": {"amqp": {"messageType": name, "bindingVersion": AMQP_BINDING}},
        }
    channels: dict[str, Any] = {}
    exchanges = {x.name: x for x in topology.exchanges}
    for exchange in topology.exchanges:
        sent = [n for n, c in classes.items() if c.event_exchange == exchange.name]
        channels[_id(exchange.name)] = {
            "address": exchange.name,
            "title": f"exchange {exchange.name}",
            "messages": {message_ids[n]: _message_ref(message_ids[n]) for n in sorted(sent)},
            "bindings": {"amqp": {
                "is": "routingKey",
                "exchange": {"name": exchange.name, "type": exchange.type,
                             "durable": exchange.durable, "autoDelete": exchange.auto_delete,
                             "vhost": vhost},
                "bindingVersion": AMQP_BINDING,
            }},
        }  # fmt: skip
    specs = {q.name: q for q in topology.queues}
    operations: dict[str, Any] = {}
    for consumer in consumers:
        spec = specs.get(consumer.queue) or QueueSpec(name=consumer.queue)
        handled = sorted(consumer.event_classes())
        _queue_channels(channels, spec, [message_ids[n] for n in handled], vhost)
        for name in handled:
            operations[_id(f"{consumer.__name__}.receive.{name}")] = {
                "action": "receive",
                "title": f"{consumer.consumer_name()} handles {name}",
                "channel": {"$ref": f"#/channels/{_id(spec.name)}"},
                "messages": [{"$ref": f"#/channels/{_id(spec.name)}/messages/{message_ids[name]}"}],
                "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING}},
            }
    for name, contract in sorted(contracts.items()):
        target = classes[name].event_exchange
        if not contract.published_by or target is None or target not in exchanges:
            continue
        operations[_id(f"send.{name}")] = {
            "action": "send",
            "title": f"{', '.join(contract.published_by)} publish {name}",
            "channel": {"$ref": f"#/channels/{_id(target)}"},
            "messages": [{"$ref": f"#/channels/{_id(target)}/messages/{message_ids[name]}"}],
            "bindings": {"amqp": {"deliveryMode": 2, "mandatory": True, "cc": [name],
                                  "bindingVersion": AMQP_BINDING}},
        }  # fmt: skip
    return {
        "asyncapi": VERSION,
        "info": {"title": title, "version": "1.0.0",
                 "description": "Generated by kanin asyncapi from the code and topology."},
        "defaultContentType": "application/json",
        "servers": {"rabbitmq": {"host": f"{host}:{port}", "protocol": url.scheme,
                                 "protocolVersion": "0-9-1", "pathname": url.path or "/"}},
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": dict(sorted(schemas.items()))},
    }  # fmt: skip


def _message_ref(mid: str) -> dict[str, str]:
    return {"$ref": f"#/components/messages/{mid}"}


def _queue_channels(channels: dict[str, Any], spec: QueueSpec, mids: list[str], vhost: str) -> None:
    """The queue's channel, and one per retry and dead-letter queue."""
    for name, title in [(spec.name, f"queue {spec.name}")] + [
        (q.name, f"{q.role} queue of {spec.name}") for q in recovery_queues(spec)
    ]:
        channel = channels.setdefault(_id(name), {
            "address": name,
            "title": title,
            "messages": {},
            "bindings": {"amqp": {
                "is": "queue",
                "queue": {"name": name, "durable": spec.durable, "exclusive": False,
                          "autoDelete": spec.auto_delete, "vhost": vhost},
                "bindingVersion": AMQP_BINDING,
            }},
        })  # fmt: skip
        for mid in mids:
            channel["messages"][mid] = _message_ref(mid)

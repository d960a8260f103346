"""Transports: how kanin talks to a broker, chosen once from the broker URL.

``amqp://`` and ``amqps://`` (one host or several) are RabbitMQ through aio-pika
(``amqp.py``); ``memory://`` is the embedded broker of this process (``embedded.py``).
Both implement ``base.Transport``; nothing above this package asks which one it has.
"""

from __future__ import annotations

from framework.settings import Settings
from framework.transport.base import (
    ConsumerChannel,
    Delivery,
    OutgoingMessage,
    Properties,
    PublishChannel,
    Transport,
)

__all__ = [
    "ConsumerChannel",
    "Delivery",
    "OutgoingMessage",
    "Properties",
    "PublishChannel",
    "Transport",
    "open_transport",
]


def open_transport(settings: Settings, name: str, publish_name: str | None = None) -> Transport:
    """The transport for ``settings.broker_url``; its connections are named ``name``
    (consuming) and ``publish_name`` (publishing; default ``<name>-publish``). Nothing
    connects until it is asked to."""
    if settings.broker_url.startswith("memory://"):
        from framework.transport.embedded import MemoryTransport

        return MemoryTransport(settings)
    from framework.transport.amqp import AmqpTransport

    return AmqpTransport(settings, name, publish_name)

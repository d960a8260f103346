"""kanin: a RabbitMQ worker framework. Import package ``framework``, console script ``kanin``."""

from framework.consumer import Consumer, Context
from framework.errors import (
    BrokerError,
    BrokerRefused,
    BrokerUnavailable,
    ConfigError,
    KaninError,
    PublishFailed,
    Reject,
    Retry,
    TopologyConflict,
    TopologyError,
    Unroutable,
)
from framework.events import Event, upcaster
from framework.publisher import Publisher
from framework.retry import RetryPolicy
from framework.settings import Settings
from framework.worker import Worker

__all__ = [
    "BrokerError",
    "BrokerRefused",
    "BrokerUnavailable",
    "ConfigError",
    "Consumer",
    "Context",
    "Event",
    "KaninError",
    "PublishFailed",
    "Publisher",
    "Reject",
    "Retry",
    "RetryPolicy",
    "Settings",
    "TopologyConflict",
    "TopologyError",
    "Unroutable",
    "Worker",
    "upcaster",
]

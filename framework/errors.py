"""Every error kanin raises on purpose, and the CLI exit code each one maps to.

``ConfigError`` (exit 2) means the user's input is wrong: fix the file or the flag.
``BrokerError`` (exit 1) means the broker refused or could not be reached.
"""

from __future__ import annotations

from dataclasses import dataclass


class KaninError(Exception):
    """Base class of kanin's own errors."""

    exit_code = 1


class ConfigError(KaninError):
    """Invalid settings, topology file or command-line input."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a topology file, located as precisely as the file allows."""

    file: str
    line: int | None
    column: int | None
    path: str
    reason: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


class TopologyError(ConfigError):
    """A topology file that cannot be used; lists every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class BrokerError(KaninError):
    """The broker could not be reached or refused an operation."""


class BrokerUnavailable(BrokerError):
    """No connection to the broker (or its management API) within the bounds."""


@dataclass(frozen=True)
class Difference:
    """One property where the broker's object and the file disagree."""

    argument: str
    broker: object
    file: object


class TopologyConflict(BrokerError):
    """Objects that exist on the broker with other properties than the file declares."""

    def __init__(self, conflicts: list[str]) -> None:
        self.conflicts = conflicts
        super().__init__(
            "the broker holds objects that differ from the file "
            "(change the file, or delete or migrate the objects):\n  " + "\n  ".join(conflicts)
        )


class Unroutable(BrokerError):
    """A mandatory publish that no binding routed: the broker returned it."""

    def __init__(self, exchange: str, routing_key: str, reply: str = "NO_ROUTE") -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        where = f"exchange {exchange!r}" if exchange else "the default exchange"
        super().__init__(f"{reply}: {where} routed routing key {routing_key!r} to no queue")


class BrokerRefused(BrokerError):
    """The broker refused an operation with a channel error: ``code`` is its reply code
    (403 ACCESS_REFUSED, 404 NOT_FOUND, 406 PRECONDITION_FAILED, ...)."""

    def __init__(self, code: int, reply: str) -> None:
        self.code = code
        self.reply = reply
        super().__init__(reply)


class PublishFailed(BrokerError):
    """A publish that did not succeed within ``KANIN_PUBLISH_TIMEOUT``: nacked or refused
    by the broker, not confirmed in time, or no connection came back in time."""

    def __init__(self, exchange: str, routing_key: str, cause: str) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.cause = cause
        where = f"exchange {exchange!r}" if exchange else "the default exchange"
        super().__init__(f"could not publish to {where} with routing key {routing_key!r}: {cause}")


# Control flow a handler raises to steer what happens to the message.


class Retry(Exception):
    """Retry this message later through the wait queues, with ``delay`` seconds if given.

    ``delay`` cannot exceed the wait queue's own delay for this attempt (the broker's
    message TTL only shortens a wait). After the last attempt the message goes to the DLQ.
    """

    def __init__(self, reason: str = "retry requested", delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Reject(Exception):
    """This message can never succeed: park it in the DLQ at once, with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

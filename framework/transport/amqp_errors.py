"""aio-pika's and aiormq's exceptions, turned into kanin's: one place for the mapping.

A channel error with a reply code (403, 404, 406 ...) is the broker refusing something:
``BrokerRefused``. Anything about a connection or channel that went away is
``BrokerUnavailable``: worth trying again once the connection is back.
"""

from __future__ import annotations

import errno

import aiormq.exceptions

from framework.errors import BrokerRefused, BrokerUnavailable, KaninError
from framework.settings import Settings
from framework.tls import causes, tls_reason

# What a channel or connection that went away (or refused) raises.
CHANNEL_GONE = (
    ConnectionError,
    OSError,
    TimeoutError,
    RuntimeError,  # aio-pika: "<Connection ...> closed"; aiormq: ChannelInvalidStateError
    aiormq.exceptions.AMQPError,
)

_ERRNO_NAMES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}
# Reply codes of the channel errors aiormq raises as classes of their own.
_CODES: dict[type[BaseException], int] = {
    aiormq.exceptions.ChannelAccessRefused: 403,
    aiormq.exceptions.ChannelNotFoundEntity: 404,
    aiormq.exceptions.ChannelLockedResource: 405,
    aiormq.exceptions.ChannelPreconditionFailed: 406,
}
_NAMES = {
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
}


def reason(exc: BaseException | None, settings: Settings | None = None) -> str:
    """One line saying why a connection or an operation failed (never the password)."""
    if exc is None:
        return "closed"
    tls_failure = tls_reason(exc)
    if tls_failure is not None:
        return tls_failure
    if any(isinstance(e, ConnectionResetError) for e in causes(exc)):
        return "connection reset"
    if isinstance(exc, aiormq.exceptions.ConnectionClosed) and len(exc.args) == 2:
        code, text = exc.args
        text = str(text or "")
        return f"{text} ({code})" if text and code is not None else text or str(code)
    if isinstance(exc, aiormq.exceptions.AMQPConnectionError) and len(exc.args) == 2:
        number = exc.args[0]  # aiormq's wrapping of an OSError: (errno, text)
        if isinstance(number, int) and number in _ERRNO_NAMES:
            return _ERRNO_NAMES[number]
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    text = " ".join((text or type(exc).__name__).split())
    secret = settings.broker_password if settings is not None else None
    if secret is not None and secret.get_secret_value():
        text = text.replace(secret.get_secret_value(), "***")
    return text


def refusal(exc: BaseException) -> BrokerRefused | None:
    """The broker's refusal carried by a channel error, or None for anything else."""
    code = _CODES.get(type(exc))
    if code is not None:
        text = str(exc.args[0]) if exc.args else _NAMES[code]
        return BrokerRefused(code, text)
    if type(exc) is aiormq.exceptions.ChannelClosed and len(exc.args) == 2 and exc.args[0]:
        return BrokerRefused(int(exc.args[0]), str(exc.args[1]))
    return None


def kanin_error(exc: BaseException, settings: Settings | None = None) -> KaninError:
    """A client library's exception as kanin's: the broker's refusal, or a lost link."""
    refused = refusal(exc)
    if refused is not None:
        return refused
    return BrokerUnavailable(reason(exc, settings))

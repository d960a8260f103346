"""TLS for the connections kanin opens: the broker (``amqps://``), its management API
(``https://``) and Redis (``rediss://``), all verified against one set of CA certificates.

Verification is on unless ``KANIN_BROKER_TLS_VERIFY=false`` says otherwise, and then every
process that connects to the broker says so in a WARNING when it starts. A TLS failure
becomes one line naming what went wrong: the certificate check and its reason, a server
that asked for a client certificate, a port that speaks TLS or one that does not.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from framework.errors import ConfigError
from framework.settings import Settings, read_password

log = logging.getLogger("kanin.tls")

# OpenSSL's reasons for a TLS handshake with a server that is not speaking TLS.
_NOT_TLS = ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "PACKET_LENGTH")
# ... and for a server that wanted a client certificate and got none (or none it trusts).
_CLIENT_CERT = (
    "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    "SSLV3_ALERT_HANDSHAKE_FAILURE",
    "SSLV3_ALERT_BAD_CERTIFICATE",
)
SPEAKS_TLS = "this port speaks TLS (use amqps://, or the broker's plain port)"
UNVERIFIED = (
    "TLS verification is off (KANIN_BROKER_TLS_VERIFY=false): the certificates and host "
    "names of the broker, its management API and Redis are not checked"
)


def client_context(settings: Settings) -> ssl.SSLContext:
    """An ``SSLContext`` that verifies the server against ``KANIN_BROKER_CA_FILE`` (or the
    system's store) and presents the client certificate, when one is set."""
    ca = settings.broker_ca_file
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"KANIN_BROKER_CA_FILE {str(ca)!r}: {_file_problem(exc)}") from None
    if settings.broker_cert_file is not None:
        password = _key_password(settings.broker_key_password_file)
        key = settings.broker_key_file
        try:
            context.load_cert_chain(
                settings.broker_cert_file, str(key) if key is not None else None, password
            )
        except (OSError, ssl.SSLError) as exc:
            files = f"{str(settings.broker_cert_file)!r}" + (f", {str(key)!r}" if key else "")
            problem = (
                "not a PEM certificate with its key, or the key's password is wrong"
                if isinstance(exc, ssl.SSLError)
                else _file_problem(exc)
            )
            raise ConfigError(
                f"KANIN_BROKER_CERT_FILE/KANIN_BROKER_KEY_FILE {files}: {problem}"
            ) from None
    if not settings.broker_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def redis_options(settings: Settings) -> dict[str, Any]:
    """The keyword arguments that give a ``rediss://`` client the same CA and checks."""
    options: dict[str, Any] = {}
    if settings.broker_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.broker_ca_file)
    if not settings.broker_tls_verify:
        options["ssl_cert_reqs"] = "none"
        options["ssl_check_hostname"] = False
    return options


def warn_if_unverified(settings: Settings) -> None:
    """A WARNING at the start of every process that opens TLS connections unverified."""
    if not settings.broker_tls_verify:
        log.warning(UNVERIFIED)


def tls_reason(exc: BaseException) -> str | None:
    """One line for a TLS failure in ``exc`` (or what it was raised from); None otherwise."""
    seen = next((e for e in causes(exc) if isinstance(e, ssl.SSLError)), None)
    if isinstance(seen, ssl.SSLCertVerificationError):
        detail = str(seen.verify_message or seen.reason).rstrip(".")
        return f"certificate verify failed: {detail}"
    if not isinstance(seen, ssl.SSLError):
        return None
    why = seen.reason or ""
    if why in _NOT_TLS:
        return "this port does not speak TLS (use amqp://, or the broker's TLS port)"
    if why in _CLIENT_CERT:
        return "the server asked for a client certificate (set KANIN_BROKER_CERT_FILE)"
    text = why.lower().replace("_", " ") if why else str(seen)
    return f"TLS failed: {text}"


async def why_dropped(address: str, context: ssl.SSLContext | None, within: float) -> str | None:
    """Why the server at ``host:port`` hung up before the AMQP handshake, when TLS is the
    reason: a plain connection to a port that speaks TLS, or a TLS one without the client
    certificate the server asks for. Found by connecting once more, sending nothing."""
    host, _, port = address.rpartition(":")
    probe = context
    if probe is None:  # only the protocol is in question here, not trust
        probe = ssl.create_default_context()
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
    writer = None
    try:
        async with asyncio.timeout(min(within, 2.0)):
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port), ssl=probe)
            if context is None:
                return SPEAKS_TLS
            await reader.read(1)  # a server that wants a certificate says so, then hangs up
    except ssl.SSLError as exc:
        if context is None:
            return None if (exc.reason or "") in _NOT_TLS else SPEAKS_TLS
        return tls_reason(exc)
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        if writer is not None:
            writer.close()
    return None


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (an argument, or what it was raised from), outermost first."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8 and seen not in chain:
        chain.append(seen)
        inner = [arg for arg in seen.args if isinstance(arg, BaseException)]
        seen = inner[0] if inner else seen.__cause__ or seen.__context__
    return chain


def _key_password(path: Path | None) -> str | Callable[[], str]:
    if path is None:  # never OpenSSL's prompt on the terminal: a worker has none
        return _no_password
    try:
        return read_password(path, "broker_key_password_file")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _no_password() -> str:
    raise ConfigError(
        "the key in KANIN_BROKER_KEY_FILE is encrypted: set KANIN_BROKER_KEY_PASSWORD_FILE"
    )


def _file_problem(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or str(exc)).lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)

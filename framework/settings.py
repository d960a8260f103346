"""Process settings, read from ``KANIN_*`` environment variables and an optional ``.env`` file.

Nothing is read at import time: build a ``Settings()`` where you need one. The broker
password is split off the URL into a ``SecretStr`` as soon as the settings are built, so
``repr()``, logs and error messages only ever see the URL without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from framework.brokerurl import BrokerUrl, redact, with_password

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"
# URL settings whose password may come from a file: <name>_password_file
URLS_WITH_PASSWORD_FILES = ("management_url", "idempotency_url", "checkpoint_url", "outbox_url")


def strip_password(url: str) -> tuple[str, str | None]:
    """Split ``amqp://user:pw@host/vh`` into ``amqp://user@host/vh`` and ``pw``."""
    parsed = BrokerUrl.parse(url)
    if parsed.password is None:
        return url, None
    return str(parsed), parsed.password


class Settings(BaseSettings):
    """Everything a kanin process is configured with."""

    model_config = SettingsConfigDict(
        env_prefix="KANIN_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        hide_input_in_errors=True,  # a value may be a URL with its password
    )

    broker_url: str = Field(
        DEFAULT_BROKER_URL,
        description="AMQP URL, one host or several (amqp://u:p@h1,h2:5673/vhost); "
        "its password is moved to broker_password",
    )
    broker_password: SecretStr | None = Field(
        None, description="broker password; overrides the one in the URL"
    )
    broker_password_file: Path | None = Field(
        None, description="file holding the broker password (Docker/Kubernetes secrets)"
    )
    broker_ca_file: Path | None = Field(
        None,
        description="CA certificates (PEM) that amqps://, the https:// management API and "
        "rediss:// are verified against; unset: the system's store",
    )
    broker_cert_file: Path | None = Field(
        None, description="client certificate (PEM) for mutual TLS with the broker"
    )
    broker_key_file: Path | None = Field(
        None, description="private key of the client certificate (unset: in the cert file)"
    )
    broker_key_password_file: Path | None = Field(
        None, description="file holding the password of an encrypted client key"
    )
    broker_tls_verify: bool = Field(
        True,
        description="check the certificates and host names of TLS servers; false: "
        "unchecked, with a WARNING at every start",
    )
    broker_auth: Literal["plain", "external"] = Field(
        "plain",
        description="how kanin logs in: plain (user and password) or external (the "
        "client certificate's identity; needs amqps:// and KANIN_BROKER_CERT_FILE)",
    )
    management_url: str | None = Field(
        None, description="RabbitMQ management API; default http://<broker host>:15672/"
    )
    topology: Path = Field(Path("config/topology.yaml"), description="topology YAML file")
    service_name: str = Field("kanin", description="app_id on published messages")
    prefetch: int = Field(50, ge=1, le=65535, description="default basic.qos per consumer")
    concurrency: int = Field(32, ge=1, description="default handlers in flight per consumer")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to wait for one host")
    wait_for_broker: float = Field(
        30.0, ge=0, description="seconds a worker keeps trying every host at start"
    )
    exchange: str = Field("", description="exchange ctx.publish() uses when none is given")
    publish_timeout: float = Field(
        30.0, gt=0, description="seconds a publish may wait for a connection and its confirm"
    )
    idempotency_url: str = Field(
        "memory://", description="idempotency store: memory://, redis://host:6379/0 or off"
    )
    checkpoint_url: str | None = Field(
        None,
        description="projection checkpoints: memory://, redis://host:6379/0 or "
        "postgresql://host/db (default: memory://, lost on restart)",
    )
    outbox_url: str | None = Field(
        None,
        description="PostgreSQL database of the outbox (postgresql://...): kanin run also "
        "relays its rows",
    )
    outbox_retention: float = Field(
        3600.0, gt=0, description="seconds a sent outbox row is kept before it is deleted"
    )
    idempotency_lease: float = Field(
        60.0, gt=0, description="seconds a claimed key stays in progress (set above timeouts)"
    )
    idempotency_retention: float = Field(
        86400.0, gt=0, description="seconds a handled key is remembered"
    )
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1,
        description="largest body a consumer decodes; a larger one goes to the DLQ undecoded "
        "(BodyTooLarge)",
    )  # fmt: skip
    max_json_depth: int = Field(
        64, ge=1, description="deepest JSON nesting a consumer decodes (else JsonTooDeep)"
    )
    max_headers: int = Field(
        128, ge=1, description="most headers a consumed message may carry (else TooManyHeaders)"
    )
    max_header_bytes: int = Field(
        65536, ge=1,
        description="largest header table a consumed message may carry (else HeadersTooLarge)",
    )  # fmt: skip
    management_password_file: Path | None = Field(
        None, description="file holding the password of KANIN_MANAGEMENT_URL"
    )
    idempotency_password_file: Path | None = Field(
        None, description="file holding the password of KANIN_IDEMPOTENCY_URL"
    )
    checkpoint_password_file: Path | None = Field(
        None, description="file holding the password of KANIN_CHECKPOINT_URL"
    )
    outbox_password_file: Path | None = Field(
        None, description="file holding the password of KANIN_OUTBOX_URL"
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="seconds in-flight handlers get to finish on SIGTERM"
    )
    loop_lag_threshold: float = Field(
        0.5, gt=0, description="seconds a handler may hold the event loop before a warning"
    )
    healthz_max_lag: float = Field(
        60.0, gt=0, description="seconds the event loop may be blocked before /healthz is 503"
    )
    http_port: int | None = Field(
        None, ge=0, le=65535, description="port of /metrics, /healthz and /readyz; unset: none"
    )
    http_host: str = Field(
        "0.0.0.0",
        description="address the probe server listens on: every interface (containers); "
        "127.0.0.1 keeps it on this host",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="worker log lines: text or json"
    )
    fast_paths: bool = Field(
        True,
        description="use the faster paths through aiormq's and the OpenTelemetry SDK's "
        "internals on the versions kanin was tested with; false: their public APIs only",
    )

    @field_validator("broker_url")
    @classmethod
    def _check_url(cls, url: str) -> str:
        parsed = BrokerUrl.parse(url)  # a ValueError names the host or port at fault
        if parsed.scheme not in ("amqp", "amqps", "memory"):
            raise ValueError(
                f"broker URL must start with amqp://, amqps:// or memory://, got {str(parsed)!r}"
            )
        return url

    @field_validator(
        "broker_password_file", "broker_ca_file", "broker_cert_file", "broker_key_file",
        "broker_key_password_file", "management_password_file", "idempotency_password_file",
        "checkpoint_password_file", "outbox_password_file", mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("management_url", mode="before")
    @classmethod
    def _check_management_url(cls, url: object) -> object:
        if isinstance(url, str):
            if not url.strip():
                return None  # KANIN_MANAGEMENT_URL= (empty) means: not set
            if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
                raise ValueError(f"must be an http:// or https:// URL, got {redact(url)!r}")
        return url

    @model_validator(mode="after")
    def _split_password(self) -> Settings:
        url, password = strip_password(self.broker_url)
        self.broker_url = url
        if self.broker_password_file is not None:
            secret = read_password(self.broker_password_file, "broker_password_file")
            self.broker_password = SecretStr(secret)
        elif self.broker_password is None and password is not None:
            self.broker_password = SecretStr(password)
        for name in URLS_WITH_PASSWORD_FILES:
            path: Path | None = getattr(self, name.replace("_url", "_password_file"))
            target: str | None = getattr(self, name)
            if path is None:
                continue
            if not target or "://" not in target:
                raise ValueError(
                    f"KANIN_{name.replace('_url', '_password_file').upper()} is set, but "
                    f"KANIN_{name.upper()} is not a URL with a host"
                )
            secret = read_password(path, name.replace("_url", "_password_file"))
            setattr(self, name, with_password(target, secret))
        return self

    def __repr_args__(self) -> Any:
        """Every URL without its password: ``repr()`` and ``str()`` are safe to log."""
        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, str) and "://" in value else value

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if self.broker_key_file is not None and self.broker_cert_file is None:
            raise ValueError("KANIN_BROKER_KEY_FILE is set without KANIN_BROKER_CERT_FILE")
        if self.broker_auth == "external":
            if not self.broker_url.startswith("amqps://"):
                raise ValueError(
                    "KANIN_BROKER_AUTH=external needs an amqps:// broker URL: the identity "
                    "is the client certificate's"
                )
            if self.broker_cert_file is None:
                raise ValueError("KANIN_BROKER_AUTH=external needs KANIN_BROKER_CERT_FILE")
        return self

    @property
    def broker_hosts(self) -> list[str]:
        """``host:port`` of each broker host in the URL, in the URL's order."""
        return BrokerUrl.parse(self.broker_url).addresses()

    def amqp_url(self, host: int = 0) -> str:
        """The URL to connect to host number ``host`` with, password included. Never log it."""
        secret = self.broker_password.get_secret_value() if self.broker_password else None
        url = BrokerUrl.parse(self.broker_url).for_host(host, secret)
        if self.broker_auth == "external":  # aiormq's choice of mechanism: ?auth=
            url += ("&" if "?" in url else "?") + "auth=external"
        return url

    @property
    def vhost(self) -> str:
        path = urlsplit(self.broker_url).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    def management(self) -> tuple[str, str, str]:
        """Base URL, user and password of the management API (password: never log it)."""
        broker = BrokerUrl.parse(self.broker_url)
        user = broker.user or "guest"
        secret = self.broker_password.get_secret_value() if self.broker_password else "guest"
        if self.management_url is None:
            host = broker.hosts[0][0] if broker.hosts else "127.0.0.1"
            host = f"[{host}]" if ":" in host else host
            scheme = "https" if broker.scheme == "amqps" else "http"
            port = 15671 if scheme == "https" else 15672
            return f"{scheme}://{host}:{port}/", user, secret
        base, password = strip_password(self.management_url)
        parts = urlsplit(base)
        if parts.username is not None:
            user = unquote(parts.username)
            secret = password if password is not None else secret
            base = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return base if base.endswith("/") else base + "/", user, secret


def read_password(path: Path, setting: str) -> str:
    """The password in the file ``path`` that the setting ``setting`` names (``ValueError``
    naming both when it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ValueError(
            f"cannot read KANIN_{setting.upper()} {str(path)!r}: {exc.strerror}"
        ) from None

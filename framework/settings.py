"""Process settings, read from ``KANIN_*`` environment variables and an optional ``.env`` file.

Nothing is read at import time: build a ``Settings()`` where you need one. The broker
password is split off the URL into a ``SecretStr`` as soon as the settings are built, so
``repr()``, logs and error messages only ever see the URL without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"


def strip_password(url: str) -> tuple[str, str | None]:
    """Split ``amqp://user:pw@host/vh`` into ``amqp://user@host/vh`` and ``pw``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, None
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.username is not None:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password)


def with_password(url: str, password: str | None) -> str:
    """Put ``password`` back into a URL made by :func:`strip_password`."""
    if password is None:
        return url
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


class Settings(BaseSettings):
    """Everything a kanin process is configured with."""

    model_config = SettingsConfigDict(
        env_prefix="KANIN_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    broker_url: str = Field(
        DEFAULT_BROKER_URL, description="AMQP URL; its password is moved to broker_password"
    )
    broker_password: SecretStr | None = Field(
        None, description="broker password; overrides the one in the URL"
    )
    broker_password_file: Path | None = Field(
        None, description="file holding the broker password (Docker/Kubernetes secrets)"
    )
    management_url: str | None = Field(
        None, description="RabbitMQ management API; default http://<broker host>:15672/"
    )
    topology: Path = Field(Path("config/topology.yaml"), description="topology YAML file")
    service_name: str = Field("kanin", description="app_id on published messages")
    prefetch: int = Field(50, ge=1, le=65535, description="default basic.qos per consumer")
    concurrency: int = Field(32, ge=1, description="default handlers in flight per consumer")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to wait for the broker")
    exchange: str = Field("", description="exchange ctx.publish() uses when none is given")
    publish_timeout: float = Field(
        30.0, gt=0, description="seconds a publish may wait for a connection and its confirm"
    )
    idempotency_url: str = Field(
        "memory://", description="idempotency store: memory://, redis://host:6379/0 or off"
    )
    idempotency_lease: float = Field(
        60.0, gt=0, description="seconds a claimed key stays in progress (set above timeouts)"
    )
    idempotency_retention: float = Field(
        86400.0, gt=0, description="seconds a handled key is remembered"
    )
    shutdown_grace: float = Field(
        30.0, ge=0, description="seconds in-flight handlers get to finish on SIGTERM"
    )
    http_port: int | None = Field(
        None, ge=0, le=65535, description="port of /metrics, /healthz and /readyz; unset: none"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="worker log lines: text or json"
    )

    @field_validator("broker_url")
    @classmethod
    def _check_scheme(cls, url: str) -> str:
        scheme = urlsplit(url).scheme
        if scheme not in ("amqp", "amqps", "memory"):
            safe, _ = strip_password(url)
            raise ValueError(
                f"broker URL must start with amqp://, amqps:// or memory://, got {safe!r}"
            )
        return url

    @model_validator(mode="after")
    def _split_password(self) -> Settings:
        url, password = strip_password(self.broker_url)
        self.broker_url = url
        if self.broker_password_file is not None:
            try:
                text = self.broker_password_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(
                    f"cannot read KANIN_BROKER_PASSWORD_FILE {str(self.broker_password_file)!r}: "
                    f"{exc.strerror}"
                ) from None
            self.broker_password = SecretStr(text.rstrip("\r\n"))
        elif self.broker_password is None and password is not None:
            self.broker_password = SecretStr(password)
        return self

    def amqp_url(self) -> str:
        """The URL to connect with, password included. Never log it."""
        secret = self.broker_password.get_secret_value() if self.broker_password else None
        return with_password(self.broker_url, secret)

    @property
    def vhost(self) -> str:
        path = urlsplit(self.broker_url).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    def management(self) -> tuple[str, str, str]:
        """Base URL, user and password of the management API (password: never log it)."""
        broker = urlsplit(self.broker_url)
        user = unquote(broker.username or "guest")
        secret = self.broker_password.get_secret_value() if self.broker_password else "guest"
        if self.management_url is None:
            host = broker.hostname or "127.0.0.1"
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

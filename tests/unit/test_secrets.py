"""Passwords in URLs: redacted wherever a URL is shown, read from files for every URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from framework.brokerurl import redact, with_password
from framework.settings import Settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("postgresql://u:p%40w@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
        ("postgresql://h/db?user=u&password=s3cret", "postgresql://h/db?user=u&password=***"),
        ("http://guest:p@ss@h:15672/", "http://guest:***@h:15672/"),
        ("amqp://u:s3cret@h1,h2:5673/vh", "amqp://u:***@h1,h2:5673/vh"),
        ("postgresql://u@h/db?email=a@b", "postgresql://u@h/db?email=a@b"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("memory://", "memory://"),
    ],
)
def test_redact_hides_the_password_and_nothing_else(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_with_password_replaces_or_adds_it_encoded() -> None:
    assert with_password("redis://h:6379/0", "a/b@c") == "redis://:a%2Fb%40c@h:6379/0"
    assert with_password("postgresql://app:old@h/db", "new") == "postgresql://app:new@h/db"
    with pytest.raises(ValueError, match="not a URL"):
        with_password("off", "x")


def test_every_url_takes_its_password_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        management_url="http://ops@rabbit:15672/",
        management_password_file=secret,
        idempotency_url="redis://redis:6379/0",
        idempotency_password_file=secret,
        checkpoint_url="postgresql://app@db/app",
        checkpoint_password_file=secret,
        outbox_url="postgresql://app:old@db/app",
        outbox_password_file=secret,
    )
    assert settings.management() == ("http://rabbit:15672/", "ops", "from-a-file")
    assert settings.idempotency_url == "redis://:from-a-file@redis:6379/0"
    assert settings.checkpoint_url == "postgresql://app:from-a-file@db/app"
    assert settings.outbox_url == "postgresql://app:from-a-file@db/app"
    assert "from-a-file" not in repr(settings) and "from-a-file" not in str(settings)


def test_a_password_file_without_its_url_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    with pytest.raises(ValidationError, match="KANIN_OUTBOX_PASSWORD_FILE is set, but"):
        Settings(_env_file=None, outbox_password_file=secret)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="cannot read KANIN_IDEMPOTENCY_PASSWORD_FILE"):
        Settings(_env_file=None, idempotency_url="redis://h/0",  # type: ignore[call-arg]
                 idempotency_password_file=tmp_path / "missing")  # fmt: skip


def test_a_refused_setting_never_shows_its_value() -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(_env_file=None, management_url="ftp://ops:s3cret@h/")  # type: ignore[call-arg]
    assert "s3cret" not in str(refused.value) and "ftp://ops:***@h/" in str(refused.value)

"""Retry schedules, durations and settings (no broker involved)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from framework.cli import load_settings
from framework.errors import ConfigError
from framework.retry import RetryPolicy
from framework.settings import Settings
from framework.units import parse_duration, to_millis


def test_exponential_schedule_is_capped() -> None:
    policy = RetryPolicy(attempts=6, backoff="exponential", initial=1.0, multiplier=2, max=10)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 8, 10]
    assert policy.delays_ms() == [1000, 2000, 4000, 8000, 10000]


def test_fixed_schedule() -> None:
    assert RetryPolicy(attempts=3, backoff="fixed", initial="250ms").delays_ms() == [250, 250]


def test_single_attempt_has_no_wait_queue() -> None:
    assert RetryPolicy(attempts=1).delays_ms() == []


def test_cap_below_initial_is_refused() -> None:
    with pytest.raises(ValidationError, match="max"):
        RetryPolicy(initial=10, max=5)


@pytest.mark.parametrize(
    ("text", "seconds"), [(2, 2.0), ("1.5", 1.5), ("500ms", 0.5), ("5m", 300.0), ("1d", 86400.0)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_millis_round_up_never_shorten() -> None:
    assert to_millis(0.0001) == 1
    assert to_millis(1.0) == 1000
    assert to_millis(0.0015) == 2


def test_password_is_split_off_and_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KANIN_BROKER_URL", "amqp://shop:s3cr%40t@rabbit.internal:5672/prod")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert "s3cr" not in repr(settings)
    assert "s3cr" not in str(settings)
    assert settings.broker_url == "amqp://shop@rabbit.internal:5672/prod"
    assert settings.amqp_url() == "amqp://shop:s3cr%40t@rabbit.internal:5672/prod"
    assert settings.vhost == "prod"
    assert settings.management() == ("http://rabbit.internal:15672/", "shop", "s3cr@t")


def test_password_file_wins(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "password"
    secret.write_text("from-file\n", encoding="utf-8")
    monkeypatch.setenv("KANIN_BROKER_URL", "amqp://shop:in-url@h/")
    monkeypatch.setenv("KANIN_BROKER_PASSWORD_FILE", str(secret))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.amqp_url() == "amqp://shop:from-file@h:5672/"
    assert "from-file" not in repr(settings)


def test_dotenv_file_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("KANIN_SERVICE_NAME=shop\nKANIN_PREFETCH=7\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert (settings.service_name, settings.prefetch) == ("shop", 7)


def test_settings_errors_never_show_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KANIN_BROKER_URL", "http://shop:hunter2@h/")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "KANIN_BROKER_URL" in str(info.value)
    assert "hunter2" not in str(info.value)
    monkeypatch.setenv("KANIN_BROKER_URL", "amqp://shop:hunter2@h/")
    monkeypatch.setenv("KANIN_PREFETCH", "lots")
    with pytest.raises(ConfigError, match="KANIN_PREFETCH") as info:
        load_settings()
    assert "hunter2" not in str(info.value)

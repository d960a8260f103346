"""TLS settings: what is refused before any connection, and what reaches aiormq."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError

from framework.errors import ConfigError
from framework.settings import Settings
from framework.tls import client_context, redis_options, tls_reason


def make(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"broker_auth": "external", "broker_cert_file": "c.pem"}, "needs an amqps:// broker URL"),
        ({"broker_auth": "external", "broker_url": "amqps://h/"}, "needs KANIN_BROKER_CERT_FILE"),
        ({"broker_key_file": "k.pem"}, "KANIN_BROKER_KEY_FILE is set without"),
    ],
)
def test_settings_that_cannot_work_are_refused(values: dict[str, object], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        make(**values)


def test_external_asks_aiormq_for_the_external_mechanism() -> None:
    settings = make(broker_url="amqps://h1:5671,h2/vh", broker_auth="external",
                    broker_cert_file="c.pem")  # fmt: skip
    assert settings.amqp_url(1) == "amqps://h2:5671/vh?auth=external"
    assert make(broker_url="amqps://u:p@h/").amqp_url() == "amqps://u:p@h:5671/"


def test_an_empty_file_setting_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KANIN_BROKER_CA_FILE", "")
    monkeypatch.setenv("KANIN_BROKER_KEY_PASSWORD_FILE", " ")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.broker_ca_file is None and settings.broker_key_password_file is None


def test_verification_is_on_unless_turned_off() -> None:
    assert client_context(make()).verify_mode == ssl.CERT_REQUIRED
    assert client_context(make()).check_hostname
    off = client_context(make(broker_tls_verify=False))
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname
    assert redis_options(make(broker_tls_verify=False)) == {
        "ssl_cert_reqs": "none", "ssl_check_hostname": False,
    }  # fmt: skip
    assert redis_options(make(broker_ca_file="ca.pem")) == {"ssl_ca_certs": "ca.pem"}


def test_unreadable_certificate_files_are_config_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=r"KANIN_BROKER_CA_FILE .*no certificate"):
        client_context(make(broker_ca_file=garbage))
    with pytest.raises(ConfigError, match="not a PEM certificate with its key"):
        client_context(make(broker_cert_file=garbage))


def test_tls_reasons_are_found_inside_wrapping_exceptions() -> None:
    inner = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    inner.reason = "WRONG_VERSION_NUMBER"
    wrapped = ConnectionError("Server communication error", inner)
    assert tls_reason(wrapped) == (
        "this port does not speak TLS (use amqp://, or the broker's TLS port)"
    )
    assert tls_reason(ConnectionResetError(104, "reset")) is None

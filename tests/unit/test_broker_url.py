"""Broker URLs with one host or several (the form other AMQP clients accept for a cluster)."""

from __future__ import annotations

import pytest

from framework.brokerurl import BrokerUrl
from framework.cli import load_settings
from framework.errors import ConfigError
from framework.settings import Settings


def test_a_cluster_url_names_every_host_and_hides_the_password() -> None:
    url = BrokerUrl.parse("amqp://shop:s%40cret@h1:5672,h2:5673,h3/prod?heartbeat=5")
    assert url.hosts == (("h1", 5672), ("h2", 5673), ("h3", None))
    assert url.addresses() == ["h1:5672", "h2:5673", "h3:5672"]
    assert str(url) == "amqp://shop@h1:5672,h2:5673,h3/prod?heartbeat=5"
    assert url.password == "s@cret"
    assert url.for_host(2, "s@cret") == "amqp://shop:s%40cret@h3:5672/prod?heartbeat=5"


def test_tls_ports_and_ipv6_literals() -> None:
    url = BrokerUrl.parse("amqps://u:p@[::1],[fd00::2]:5999/")
    assert url.addresses() == ["[::1]:5671", "[fd00::2]:5999"]
    assert url.for_host(1, "p") == "amqps://u:p@[fd00::2]:5999/"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("amqp://u:p@h1:x,h2/", "host 'h1:x': port 'x' is not a number from 1 to 65535"),
        ("amqp://u:p@h1,:5672/", "host ':5672' has no name"),
        ("amqp://u:p@h1:70000/", "port '70000' is not a number"),
        ("amqp:///vhost", "names no host"),
    ],
)
def test_a_bad_host_list_is_a_clear_settings_error(
    url: str, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(broker_url=url)  # as from --broker-url
    message = str(error.value)
    assert message.startswith("--broker-url: ") and reason in message
    assert ":p@" not in message
    monkeypatch.setenv("KANIN_BROKER_URL", url)
    with pytest.raises(ConfigError) as error:
        load_settings()
    assert str(error.value).startswith("KANIN_BROKER_URL: ")


def test_settings_keep_every_host_and_take_the_first_for_the_management_api() -> None:
    settings = Settings(_env_file=None, broker_url="amqp://guest:pw@10.0.0.1,10.0.0.2:5702/")  # type: ignore[call-arg]
    assert settings.broker_url == "amqp://guest@10.0.0.1,10.0.0.2:5702/"
    assert settings.broker_hosts == ["10.0.0.1:5672", "10.0.0.2:5702"]
    assert settings.amqp_url(1) == "amqp://guest:pw@10.0.0.2:5702/"
    assert settings.management() == ("http://10.0.0.1:15672/", "guest", "pw")

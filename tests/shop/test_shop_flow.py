"""The example shop on the test kit: no broker, no sleeps, minutes of retries skipped."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from framework.testing import TestKit
from framework.topology import load_topology
from workers.inventory import ReserveInventory
from workers.notifications import SendEmail
from workers.orders import order
from workers.payments import ChargePayment
from workers.shipping import ScheduleShipment

ROOT = Path(__file__).resolve().parents[2]
SHOP = (ReserveInventory, ChargePayment, ScheduleShipment, SendEmail)


@pytest.fixture(autouse=True)
def no_random_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_PAYMENT_FAILURE_RATE", "0")


async def test_an_order_flows_to_shipping_and_email() -> None:
    async with TestKit(*SHOP, topology=load_topology(ROOT / "config/topology.yaml")) as kit:
        await kit.publish(order("ok-1"))
        await kit.settle()
        assert [m.type for m in kit.published()] == [
            "order.placed", "inventory.reserved", "payment.captured", "shipment.scheduled",
        ]  # fmt: skip
        assert kit.stats(SendEmail).handled == 3  # placed, captured, scheduled
        assert kit.dead_letters("payments.charge") == []


async def test_declined_goes_to_the_dlq_at_once_and_a_timeout_after_every_attempt() -> None:
    started = time.monotonic()
    async with TestKit(*SHOP, topology=load_topology(ROOT / "config/topology.yaml")) as kit:
        await kit.publish(order("declined-1"))
        await kit.publish(order("fail-2"))
        await kit.settle()
        payments = kit.stats(ChargePayment)
        assert (payments.handled, payments.dead_lettered) == (0, 2)
        assert payments.retried == 5  # fail-2: attempts 1..5 retried, the 6th dead-lettered
        parked = {m.headers["x-error-type"] for m in kit.dead_letters("payments.charge")}
        assert parked == {"Reject", "PaymentProviderTimeout"}
        assert kit.published("shipment.scheduled") == []
    assert time.monotonic() - started < 10  # retry delays of minutes were skipped

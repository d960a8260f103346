"""The example shop's events: each carries the state the next step needs."""

from __future__ import annotations

from pydantic import BaseModel, Field

from framework import Event


class ShopEvent(Event, exchange="shop.events"):
    """Every shop event is published to the `shop.events` topic exchange."""


class Item(BaseModel):
    sku: str
    quantity: int = Field(gt=0)
    price_cents: int = Field(ge=0)


class OrderPlaced(ShopEvent, type="order.placed", version=1):
    order_id: str
    customer_email: str
    items: list[Item] = Field(min_length=1)

    @property
    def total_cents(self) -> int:
        return sum(item.quantity * item.price_cents for item in self.items)


class InventoryReserved(ShopEvent, type="inventory.reserved", version=1):
    order_id: str
    customer_email: str
    total_cents: int


class PaymentCaptured(ShopEvent, type="payment.captured", version=1):
    order_id: str
    customer_email: str
    amount_cents: int
    payment_id: str


class PaymentFailed(ShopEvent, type="payment.failed", version=1):
    order_id: str
    customer_email: str
    reason: str


class ShipmentScheduled(ShopEvent, type="shipment.scheduled", version=1):
    order_id: str
    customer_email: str
    tracking_id: str

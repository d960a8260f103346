"""Tell the customer what happened: one consumer, several event types of one queue."""

from __future__ import annotations

from framework import Consumer, Context
from workers.events import OrderPlaced, PaymentCaptured, PaymentFailed, ShipmentScheduled


class SendEmail(Consumer):
    queue = "notifications.email"

    async def handle(
        self,
        event: OrderPlaced | PaymentCaptured | PaymentFailed | ShipmentScheduled,
        ctx: Context,
    ) -> None:
        subject = {
            OrderPlaced: "We got your order",
            PaymentCaptured: "Payment received",
            PaymentFailed: "Your payment did not go through",
            ShipmentScheduled: "Your order is on its way",
        }[type(event)]
        ctx.logger.info("email to %s: %s (%s)", event.customer_email, subject, event.order_id)

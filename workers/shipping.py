"""Schedule the shipment of a paid order."""

from __future__ import annotations

import uuid

from framework import Consumer, Context
from workers.events import PaymentCaptured, ShipmentScheduled


class ScheduleShipment(Consumer):
    queue = "shipping.schedule"

    async def handle(self, event: PaymentCaptured, ctx: Context) -> None:
        await ctx.publish(
            ShipmentScheduled(
                order_id=event.order_id,
                customer_email=event.customer_email,
                tracking_id=f"trk_{uuid.uuid4().hex[:10]}",
            )
        )

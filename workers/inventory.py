"""Reserve stock for a placed order."""

from __future__ import annotations

from framework import Consumer, Context, RetryPolicy
from workers.events import InventoryReserved, OrderPlaced


class ReserveInventory(Consumer):
    queue = "inventory.reserve"
    prefetch = 50
    retry = RetryPolicy(attempts=5, backoff="exponential", initial=1.0, max=60.0)

    async def handle(self, event: OrderPlaced, ctx: Context) -> None:
        ctx.logger.info("reserved %d item(s) for %s", len(event.items), event.order_id)
        await ctx.publish(
            InventoryReserved(
                order_id=event.order_id,
                customer_email=event.customer_email,
                total_cents=event.total_cents,
            )
        )

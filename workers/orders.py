"""Place orders: the start of the shop's event flow.

python -m workers.orders 5            # five orders
python -m workers.orders fail-1 declined-2 ok-3
"""

from __future__ import annotations

import asyncio
import sys

from framework import Publisher, Settings
from workers.events import Item, OrderPlaced


def order(order_id: str) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        customer_email=f"{order_id}@example.com",
        items=[Item(sku="rabbit-plush", quantity=2, price_cents=1299)],
    )


async def place(order_ids: list[str], settings: Settings | None = None) -> list[str]:
    async with Publisher(settings or Settings()) as publisher:
        return await publisher.publish_many(order(i) for i in order_ids)


if __name__ == "__main__":
    args = sys.argv[1:] or ["1"]
    ids = [f"order-{n}" for n in range(int(args[0]))] if args[0].isdigit() else args
    for message_id in asyncio.run(place(ids)):
        print(message_id)

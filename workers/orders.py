"""Place orders: the start of the shop's event flow (and of its traces).

python -m workers.orders 5            # five orders
python -m workers.orders fail-1 declined-2 ok-3

Traced like ``kanin run``: set OTEL_EXPORTER_OTLP_ENDPOINT (see docs/tracing.md).
"""

from __future__ import annotations

import asyncio
import sys

from opentelemetry.trace import TracerProvider

from framework import Publisher, Settings
from framework.tracing import provider_from_env
from workers.events import Item, OrderPlaced


def order(order_id: str) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        customer_email=f"{order_id}@example.com",
        items=[Item(sku="rabbit-plush", quantity=2, price_cents=1299)],
    )


def demo() -> dict[str, OrderPlaced]:
    """The orders `kanin demo` places: paid at once, paid on the second attempt, and one
    whose payment times out on every attempt (it ends in payments.charge.dlq)."""
    return {order_id: order(order_id) for order_id in ("order-1", "flaky-2", "fail-3")}


async def place(
    order_ids: list[str],
    settings: Settings | None = None,
    tracer_provider: TracerProvider | None = None,
) -> list[str]:
    async with Publisher(settings or Settings(), tracer_provider=tracer_provider) as publisher:
        return await publisher.publish_many(order(i) for i in order_ids)


if __name__ == "__main__":
    args = sys.argv[1:] or ["1"]
    ids = [f"order-{n}" for n in range(int(args[0]))] if args[0].isdigit() else args
    settings = Settings()
    provider = provider_from_env(settings.service_name)
    try:
        for message_id in asyncio.run(place(ids, settings, provider)):
            print(message_id)
    finally:
        if provider is not None:
            provider.shutdown()

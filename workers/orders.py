"""Place orders: the start of the shop's event flow (and of its traces).

python -m workers.orders 5            # five orders
python -m workers.orders fail-1 declined-2 ok-3

With KANIN_OUTBOX_URL (postgresql://...), each order is stored in table ``orders`` and
its ``order.placed`` written to the outbox in the same transaction: a relay sends it
(``kanin outbox relay``, or any ``kanin run`` given that URL). Without it, the events are
published directly.

Traced like ``kanin run``: set OTEL_EXPORTER_OTLP_ENDPOINT (see docs/tracing.md).
"""

from __future__ import annotations

import asyncio
import sys

from opentelemetry.trace import TracerProvider

from framework import Publisher, Settings
from framework.outbox import Outbox
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


ORDERS = """
create table if not exists orders (
    order_id text primary key,
    customer_email text not null,
    total_cents integer not null,
    placed_at timestamptz not null default now()
)"""


async def place(
    order_ids: list[str],
    settings: Settings | None = None,
    tracer_provider: TracerProvider | None = None,
) -> list[str]:
    settings = settings or Settings()
    if settings.outbox_url:
        return await place_in_outbox(order_ids, settings, tracer_provider)
    async with Publisher(settings, tracer_provider=tracer_provider) as publisher:
        return await publisher.publish_many(order(i) for i in order_ids)


async def place_in_outbox(
    order_ids: list[str], settings: Settings, tracer_provider: TracerProvider | None = None
) -> list[str]:
    """Each order and its event in one transaction: both are there, or neither."""
    import psycopg

    outbox = Outbox(settings, tracer_provider=tracer_provider)
    ids = []
    async with await psycopg.AsyncConnection.connect(str(settings.outbox_url)) as conn:
        await conn.execute(ORDERS)
        for order_id in order_ids:
            placed = order(order_id)
            async with outbox.transaction(conn) as tx:
                await conn.execute(
                    "insert into orders (order_id, customer_email, total_cents) "
                    "values (%s, %s, %s)",
                    [order_id, placed.customer_email, placed.total_cents],
                )
                ids.append(await tx.publish(placed, key=order_id))
    return ids


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

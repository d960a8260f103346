"""Order history: each order's status and timeline, projected from the shop's event log.

A projection of the stream ``shop.events.log`` into PostgreSQL (KANIN_CHECKPOINT_URL,
``postgresql://...``): every row change and the checkpoint commit in one transaction,
so each event counts once, whatever crashes. Rebuild it from the log with::

    kanin replay shop.events.log workers.history --reset --from first
"""

from __future__ import annotations

import json
from typing import Any

from framework import ConfigError
from framework.eventlog import Projection, ProjectionContext
from workers.events import (
    InventoryReserved,
    OrderPlaced,
    PaymentCaptured,
    PaymentFailed,
    ShipmentScheduled,
)

ShopEvent = OrderPlaced | InventoryReserved | PaymentCaptured | PaymentFailed | ShipmentScheduled
STATUS = {
    "order.placed": "placed",
    "inventory.reserved": "reserved",
    "payment.captured": "paid",
    "payment.failed": "payment failed",
    "shipment.scheduled": "shipped",
}
TABLE = """
create table if not exists order_history (
    order_id text primary key,
    status text not null,
    total_cents integer,
    timeline jsonb not null default '[]',
    last_offset bigint not null
)"""
UPSERT = """
insert into order_history (order_id, status, total_cents, timeline, last_offset)
values (%(order_id)s, %(status)s, %(total)s, jsonb_build_array(%(step)s::jsonb), %(offset)s)
on conflict (order_id) do update set
    status = excluded.status,
    total_cents = coalesce(excluded.total_cents, order_history.total_cents),
    timeline = order_history.timeline || excluded.timeline,
    last_offset = excluded.last_offset"""


class OrderHistory(Projection):
    queue = "shop.events.log"
    name = "shop.order-history"
    offset = "first"
    on_error = "stop"

    async def prepare(self, db: Any) -> None:
        if db is None:
            raise ConfigError(
                "workers.history keeps its read model in PostgreSQL: set "
                "KANIN_CHECKPOINT_URL=postgresql://user@host/database"
            )
        await db.execute(TABLE)

    async def on_reset(self, db: Any) -> None:
        await db.execute("delete from order_history")

    async def handle(self, event: ShopEvent, ctx: ProjectionContext) -> None:
        total = event.total_cents if isinstance(event, OrderPlaced | InventoryReserved) else None
        when = ctx.published_at
        step = {
            "offset": ctx.offset,
            "event": event.event_type,
            "at": when.isoformat() if when else None,
        }
        await ctx.db.execute(
            UPSERT,
            {
                "order_id": event.order_id,
                "status": STATUS[event.event_type],
                "total": total,
                "step": json.dumps(step),
                "offset": ctx.offset,
            },
        )

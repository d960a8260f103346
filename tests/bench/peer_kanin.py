"""kanin's worker in tests/bench/peers.py: ``kanin run peer_kanin`` with a topology file
giving ``$BENCH_QUEUE`` two attempts and a 1 s wait queue between them."""

from __future__ import annotations

import os

from peer_record import RECORDER

from framework import Consumer, Context, Event


class Item(Event):
    sku: str
    quantity: int
    price_cents: int


class BenchOrder(Event, type="bench.order", version=1):
    order_id: str
    customer_email: str
    items: list[Item]
    note: str
    i: int
    sent: float
    fail: bool


class Record(Consumer):
    queue = os.environ.get("BENCH_QUEUE", "kanin-bench-peer")

    async def handle(self, event: BenchOrder, ctx: Context) -> None:
        RECORDER.handle(event.i, event.sent, event.fail)

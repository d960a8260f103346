"""Charge the customer. The payment provider fails now and then, so retries can be seen.

`SHOP_PAYMENT_FAILURE_RATE` (0.0-1.0, default 0) is the chance that a charge times out;
docker/compose.yaml sets it. An order id starting with `flaky-` times out on its first
attempt only; one starting with `fail-` always times out (it ends in the DLQ after the
last attempt); one starting with `declined-` is declined (rejected straight to the DLQ).
"""

from __future__ import annotations

import os
import random
import uuid

from framework import Consumer, Context, Reject, RetryPolicy
from workers.events import InventoryReserved, PaymentCaptured, PaymentFailed


class PaymentProviderTimeout(Exception):
    """The provider did not answer in time: worth another try later."""


class ChargePayment(Consumer):
    queue = "payments.charge"
    retry = RetryPolicy(attempts=6, backoff="exponential", initial=2.0, max=300.0)
    timeout = 30.0

    async def on_startup(self) -> None:
        self.failure_rate = float(os.environ.get("SHOP_PAYMENT_FAILURE_RATE", "0"))

    async def handle(self, event: InventoryReserved, ctx: Context) -> None:
        if event.order_id.startswith("declined-"):
            await ctx.publish(
                PaymentFailed(
                    order_id=event.order_id, customer_email=event.customer_email, reason="declined"
                )
            )
            raise Reject("card declined")
        flaky = event.order_id.startswith("flaky-") and ctx.attempt == 1
        if flaky or event.order_id.startswith("fail-") or random.random() < self.failure_rate:
            raise PaymentProviderTimeout(f"provider timed out charging {event.order_id}")
        await ctx.publish(
            PaymentCaptured(
                order_id=event.order_id,
                customer_email=event.customer_email,
                amount_cents=event.total_cents,
                payment_id=f"pay_{uuid.uuid4().hex[:12]}",
            )
        )

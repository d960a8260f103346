"""Charge the customer. The payment provider fails now and then, so retries can be seen.

`SHOP_PAYMENT_FAILURE_RATE` (0.0-1.0, default 0) is the chance that a charge times out;
docker/compose.yaml sets it. An order id starting with `flaky-` times out on its first
attempt only; one starting with `fail-` always times out (it ends in the DLQ after the
last attempt); one starting with `declined-` is declined (rejected straight to the DLQ).

In the inbox (KANIN_IDEMPOTENCY_URL=postgresql://..., as docker/compose.yaml runs it),
the charge is recorded in table ``charges`` and ``payment.captured`` written to the
outbox in the transaction that marks the message handled: a crash anywhere leaves all
three done or none. A declined card is then handled (``payment.failed`` goes out) rather
than rejected: a handler that raises rolls back its publishes with the rest.
"""

from __future__ import annotations

import os
import random
import uuid

from framework import Consumer, Context, Reject, RetryPolicy, Settings
from workers.events import InventoryReserved, PaymentCaptured, PaymentFailed

CHARGES = """
create table if not exists charges (
    payment_id text primary key,
    order_id text not null,
    amount_cents integer not null,
    charged_at timestamptz not null default now()
)"""


class PaymentProviderTimeout(Exception):
    """The provider did not answer in time: worth another try later."""


class ChargePayment(Consumer):
    queue = "payments.charge"
    retry = RetryPolicy(attempts=6, backoff="exponential", initial=2.0, max=300.0)
    timeout = 30.0

    async def on_startup(self) -> None:
        self.failure_rate = float(os.environ.get("SHOP_PAYMENT_FAILURE_RATE", "0"))
        url = Settings().idempotency_url
        if url.startswith("postgresql://"):  # the inbox: the table the charges go to
            import psycopg

            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute(CHARGES)

    async def handle(self, event: InventoryReserved, ctx: Context) -> None:
        if event.order_id.startswith("declined-"):
            await ctx.publish(
                PaymentFailed(
                    order_id=event.order_id, customer_email=event.customer_email, reason="declined"
                )
            )
            if ctx.session is None:
                raise Reject("card declined")  # parked, to show the DLQ
            return  # in the inbox a raise would roll payment.failed back: handled, declined
        flaky = event.order_id.startswith("flaky-") and ctx.attempt == 1
        if flaky or event.order_id.startswith("fail-") or random.random() < self.failure_rate:
            raise PaymentProviderTimeout(f"provider timed out charging {event.order_id}")
        captured = PaymentCaptured(
            order_id=event.order_id,
            customer_email=event.customer_email,
            amount_cents=event.total_cents,
            payment_id=f"pay_{uuid.uuid4().hex[:12]}",
        )
        if ctx.session is not None:  # the inbox: the charge commits with the message
            async with ctx.transaction() as db:
                await db.execute(
                    "insert into charges (payment_id, order_id, amount_cents) values (%s, %s, %s)",
                    [captured.payment_id, captured.order_id, captured.amount_cents],
                )
        await ctx.publish(captured)  # in the inbox: into the outbox, in that transaction

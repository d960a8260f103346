"""The retry policy: how many attempts a message gets and how long each wait lasts.

Attempt 1 is the first delivery. After a failed attempt ``n`` (``n < attempts``) the
message waits ``delay(n)`` in the wait queue ``<queue>.retry.<n>``; after the last
attempt it goes to ``<queue>.dlq``. A pure model: what happens to a failed message is
decided in ``recovery.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from framework.units import Duration, to_millis

MAX_ATTEMPTS = 50


class RetryPolicy(BaseModel):
    """Attempts and backoff of broker-side (delayed) retries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(3, ge=1, le=MAX_ATTEMPTS, description="deliveries in all, first included")
    backoff: Literal["exponential", "fixed"] = "exponential"
    initial: Duration = Field(1.0, gt=0, description="seconds before the second attempt")
    multiplier: float = Field(2.0, ge=1.0, le=100.0, description="growth per attempt (exponential)")
    max: Duration = Field(300.0, gt=0, description="cap on any one delay, seconds")
    immediate: int = Field(0, ge=0, le=10, description="fast tries in process per attempt")
    immediate_delay: Duration = Field(0.1, ge=0, description="pause between fast tries")

    @model_validator(mode="after")
    def _check_cap(self) -> RetryPolicy:
        if self.max < self.initial:
            raise ValueError(f"max ({self.max:g}s) is smaller than initial ({self.initial:g}s)")
        return self

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if not 1 <= attempt < self.attempts:
            raise ValueError(f"attempt {attempt} has no delay (attempts={self.attempts})")
        if self.backoff == "fixed":
            return min(self.initial, self.max)
        return float(min(self.initial * self.multiplier ** (attempt - 1), self.max))

    def delays_ms(self) -> list[int]:
        """The wait queues' TTLs in milliseconds, for attempts 1 .. attempts-1."""
        return [to_millis(self.delay(n)) for n in range(1, self.attempts)]

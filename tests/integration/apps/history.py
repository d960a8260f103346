"""The shop's order history on a stream of the test's own ($KT_STREAM, name $KT_NAME)."""

from __future__ import annotations

import os

from workers.history import OrderHistory


class TestHistory(OrderHistory):
    queue = os.environ.get("KT_STREAM", "kt-history")
    name = os.environ.get("KT_NAME", "kt-history")

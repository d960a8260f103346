"""What a benchmark worker process saw, written where the benchmark reads it.

Every contender's handler calls ``RECORDER.handle(i, sent, fail)`` with three fields of
the parsed payload: the message's number, when it was sent, whether it fails once. The
recorder counts, keeps the time of the first and last handled message (and of the last
healthy one), the process's CPU time at both, which ids were handled more than once, and
in latency mode how long each message waited (handler start minus ``sent``, both wall
clock). A message marked ``fail`` raises
``Flaky`` the first time this process sees it, so it goes through the contender's retry.

From the first message on, a thread writes the summary to ``$BENCH_RECORD.<pid>.json``
every 50 ms; the latencies go to ``$BENCH_RECORD.<pid>.lat.json`` once ``$BENCH_EXPECT``
messages were handled. Standard library only, so it adds nothing to a worker's memory
that a peer would not have.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any


class Flaky(Exception):
    """A message's first attempt fails on purpose."""


class Recorder:
    def __init__(self) -> None:
        self.path = os.environ.get("BENCH_RECORD", "")
        self.expect = int(os.environ.get("BENCH_EXPECT", "0"))
        self.latency = os.environ.get("BENCH_MODE") == "latency"
        self.lock = threading.Lock()
        self.count = self.healthy = self.failures = 0
        self.first = self.last = self.healthy_last = 0.0
        self.cpu_first = self.cpu_last = 0.0
        self.seen: set[int] = set()
        self.failed: set[int] = set()
        self.twice = 0
        self.waits: list[float] = []

    def handle(self, i: int, sent: float, fail: bool) -> None:
        now = time.time()
        with self.lock:
            if fail and i not in self.failed:
                self.failed.add(i)
                self.failures += 1
                raise Flaky(i)
            if self.latency:
                self.waits.append(now - sent)
            if i in self.seen:
                self.twice += 1
            self.seen.add(i)
            if not self.count:  # started here: after a fork (kanin run --processes)
                self.first, self.cpu_first = now, time.process_time()
                if self.path:
                    threading.Thread(target=self._dump_forever, daemon=True).start()
            self.count += 1
            self.last, self.cpu_last = now, time.process_time()
            if not fail:
                self.healthy += 1
                self.healthy_last = now
            if self.latency and self.count == self.expect:
                self._write(".lat.json", self.waits)

    def summary(self) -> dict[str, Any]:
        with self.lock:
            return {
                "count": self.count,
                "distinct": len(self.seen),
                "twice": self.twice,
                "healthy": self.healthy,
                "failures": self.failures,
                "first": self.first,
                "last": self.last,
                "healthy_last": self.healthy_last,
                "cpu": self.cpu_last - self.cpu_first,
            }

    def _write(self, suffix: str, data: object) -> None:
        target = f"{self.path}.{os.getpid()}{suffix}"
        with open(target + ".tmp", "w") as out:
            json.dump(data, out)
        os.replace(target + ".tmp", target)

    def _dump_forever(self) -> None:
        while True:
            self._write(".json", self.summary())
            time.sleep(0.05)


RECORDER = Recorder()

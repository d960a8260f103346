"""Random deliveries and random YAML (hypothesis): nothing a sender or a file holds makes
kanin raise, loop or handle a message twice.

Fixed examples (derandomized) in ``make test``; ``make fuzz`` runs many more with fresh
random data (``KANIN_FUZZ_EXAMPLES``, ``KANIN_FUZZ_RANDOM=1``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from framework import Consumer, Context, Event, RetryPolicy, Settings
from framework.errors import TopologyError
from framework.headers import text
from framework.testing import TestKit
from framework.topology import QueueSpec, Topology, load_topology
from framework.transport import Properties

EXAMPLES = int(os.environ.get("KANIN_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("KANIN_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Ping(Event, type="test.ping", version=2):
    n: int
    note: str = ""


# Every AMQP field value pamqp can carry: huge and negative integers, floats, decimals,
# timestamps, text (any Unicode), byte arrays (invalid UTF-8 too), arrays, nested tables.
LEAF = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.decimals(
        allow_nan=False, allow_infinity=False, places=3, max_value=10**9, min_value=-(10**9)
    )
    | st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2100, 1, 1))
    | st.text(max_size=30)
    | st.binary(max_size=30)
)
FIELD = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
KNOWN = ["x-attempt", "x-event-version", "x-idempotency-key", "traceparent", "tracestate"]
KNOWN += ["baggage", "x-death", "x-original-exchange", "x-causation-id", "x-first-death-queue"]
HEADERS = st.dictionaries(st.sampled_from(KNOWN) | st.text(max_size=12), FIELD, max_size=6)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
BODY = (
    st.binary(max_size=200)
    | JSONISH.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda n, note: json.dumps({"n": n, "note": note}).encode(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.text(max_size=20),
    )
    | st.integers(min_value=60, max_value=200).map(
        lambda d: b'{"n": 1, "note": ' + b"[" * d + b"]" * d + b"}"
    )
)
MESSAGE = st.tuples(
    BODY,
    HEADERS,
    st.none() | st.sampled_from(["test.ping", "test.other", ""]) | st.text(max_size=10),
    st.none() | st.sampled_from(["id-1", "id-2", "id-3"]) | st.text(max_size=40),
)


async def deliver(messages: list[tuple[bytes, dict[str, Any], str | None, str | None]]) -> None:
    done: Counter[str] = Counter()  # successful handler runs per idempotency key

    class Fuzzed(Consumer):
        queue = "fuzz"
        retry = RetryPolicy(attempts=2, initial=1.0)

        async def handle(self, event: Ping, ctx: Context) -> None:
            if event.n % 5 == 0:
                raise RuntimeError("fails on every attempt")
            done[text(ctx.headers.get("x-idempotency-key")) or ctx.message_id or "-"] += 1

    topology = Topology(queues=[QueueSpec(name="fuzz", retry=RetryPolicy(attempts=2, initial=1.0))])
    base = Settings(_env_file=None, max_json_depth=64)  # type: ignore[call-arg]
    async with TestKit(Fuzzed, topology=topology, settings=base) as kit:
        for body, headers, kind, message_id in messages:
            properties = Properties(headers=headers, message_type=kind, message_id=message_id)
            kit.broker.publish("", "fuzz", body, properties)
        await asyncio.wait_for(kit.settle(), 60)
        stats = kit.stats(Fuzzed)
        left = len(kit.broker.queues["fuzz"].messages) + kit.broker.unsettled
        parked = len(kit.dead_letters("fuzz"))
    assert left == 0
    assert stats.returned == 0
    # every delivery ended once: handled, a duplicate acked, moved to wait (a retry, or
    # postponed while its key was in progress), or parked
    ended = stats.handled + stats.duplicates + stats.retried + stats.postponed
    assert stats.received == ended + stats.dead_lettered
    assert stats.dead_lettered == parked
    assert [key for key, times in done.items() if times > 1 and key != "-"] == []


@FUZZ
@given(messages=st.lists(MESSAGE, min_size=1, max_size=12))
def test_any_delivery_ends_handled_retried_or_parked_and_nothing_raises(
    caplog: pytest.LogCaptureFixture,
    messages: list[tuple[bytes, dict[str, Any], str | None, str | None]],
) -> None:
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="kanin.transport"):
        asyncio.run(deliver(messages))
    assert [r.getMessage() for r in caplog.records if r.name == "kanin.transport"] == []


# Topology files: random text, and random documents built from the file's own vocabulary.
WORDS = ["exchanges", "queues", "bindings", "name", "type", "retry", "attempts", "initial"]
WORDS += ["backoff", "exchange", "queue", "routing_key", "durable", "max_length", "message_ttl"]
WORDS += ["dead_letter", "topic", "fanout", "quorum", "stream", "classic", "alternate_exchange"]
SCALAR = (
    st.sampled_from(WORDS)
    | st.text(max_size=12)
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats()
    | st.booleans()
    | st.none()
    | st.sampled_from(["${HOME}", "${NOPE}", "${NOPE:-5}", "$$", "${", "1s", "10GB", "7d"])
)
DOCUMENT = st.recursive(
    SCALAR,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)


def load_or_problems(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "topology.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_topology(path, env=env or {})
    except TopologyError as exc:
        return [str(problem) for problem in exc.problems]
    return []


def located(problems: list[str], path: Path) -> bool:
    """Each problem names the file, and a line where the file has lines to name."""
    return all(p.startswith(f"{path}:") for p in problems)


@FUZZ
@given(text=st.text(max_size=300) | DOCUMENT.map(lambda d: yaml.safe_dump(d, sort_keys=False)))
def test_any_topology_file_loads_or_fails_with_located_problems(tmp_path: Path, text: str) -> None:
    problems = load_or_problems(tmp_path, text)
    assert located(problems, tmp_path / "topology.yaml"), problems


@FUZZ
@given(value=st.text(max_size=40))
def test_variables_expand_to_their_text_and_never_run_or_read_anything(
    tmp_path: Path, value: str
) -> None:
    canary = tmp_path / "ran"
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t")
    env = {"Q": f"$(touch {canary}) `touch {canary}` {value} $(cat {secret})", "N": value}
    text = (
        "queues:\n"
        '  - name: "q-${Q}"\n'
        f'  - name: "r-${{NOPE:-$(touch {canary})}}"\n'
        f'  - name: "s-${{{secret}}}"\n'
        '  - name: "t-${N}"\n'
    )
    problems = load_or_problems(tmp_path, text, env)
    assert not canary.exists()
    assert not any("s3cr3t" in p for p in problems)
    assert located(problems, tmp_path / "topology.yaml")

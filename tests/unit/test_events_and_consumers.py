"""Events, the codec, upcasters, consumer classes and failure classification (no broker)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from framework import Consumer, Context, Event, Reject, Retry, RetryPolicy, upcaster
from framework.errors import ConfigError
from framework.events import DecodeError, new_message_id
from framework.publisher import envelope
from framework.recovery import classify


class Base(Event, exchange="test.events"):
    pass


class Placed(Base, type="t.placed", version=3):
    order_id: str
    total: int

    @upcaster(from_version=1)
    @staticmethod
    def _v1(data: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": data["id"], "amount": data["amount"]}

    @upcaster(from_version=2)
    @staticmethod
    def _v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": data["order_id"], "total": data.pop("amount")}


class Other(Event, type="t.other"):
    x: int = 0


def test_class_arguments() -> None:
    assert (Placed.event_type, Placed.event_version, Placed.event_exchange) == (
        "t.placed",
        3,
        "test.events",
    )
    assert (Base.event_type, Other.event_version, Other.event_exchange) == ("", 1, None)


def test_round_trip_from_bytes() -> None:
    event = Placed(order_id="o1", total=5)
    assert event.to_json() == b'{"order_id":"o1","total":5}'
    assert Placed.from_json(event.to_json()) == event
    assert Placed.from_json(event.to_json(), 3) == event


def test_upcasters_chain_old_versions() -> None:
    assert Placed.from_json(b'{"id": "o1", "amount": 7}', 1) == Placed(order_id="o1", total=7)
    assert Placed.from_json(b'{"order_id": "o2", "amount": 8}', 2) == Placed(order_id="o2", total=8)


def test_newer_version_than_known_is_a_decode_error() -> None:
    with pytest.raises(DecodeError) as info:
        Placed.from_json(b"{}", 4)
    assert info.value.error_type == "UnknownEventVersion"


def test_missing_upcaster_is_refused_at_class_definition() -> None:
    with pytest.raises(TypeError, match=r"no upcaster from version\(s\) \[2\]"):

        class Gappy(Event, type="t.gappy", version=3):
            @upcaster(from_version=1)
            @staticmethod
            def _v1(data: dict[str, Any]) -> dict[str, Any]:
                return data


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        (b"", "DecodeError"),
        (b"{", "DecodeError"),
        (b"[]", "ValidationError"),
        (b'{"order_id": 1}', "ValidationError"),
    ],
)
def test_decode_errors(body: bytes, error_type: str) -> None:
    with pytest.raises(DecodeError) as info:
        Placed.from_json(body)
    assert info.value.error_type == error_type


def test_message_ids_are_uuid7_and_unique() -> None:
    ids = [new_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert {uuid.UUID(i).version for i in ids} == {7}
    assert ids == sorted(ids) or len({i[:13] for i in ids}) > 1  # time-ordered prefix


def test_envelope_follows_the_wire_contract() -> None:
    props = envelope(
        Placed(order_id="o", total=1),
        app_id="shop",
        correlation_id="c-1",
        causation_id="m-0",
        idempotency_key="k",
        headers={"tenant": "acme"},
    )
    assert props.content_type == "application/json"
    assert props.delivery_mode == 2
    assert props.message_type == "t.placed"
    assert props.app_id == "shop"
    assert props.correlation_id == "c-1"
    assert props.headers == {
        "x-event-version": 3,
        "x-attempt": 1,
        "x-causation-id": "m-0",
        "x-idempotency-key": "k",
        "tenant": "acme",
    }
    first = envelope(Other(), app_id="shop", persistent=False)
    assert first.correlation_id == first.message_id  # the first event of a flow
    assert first.delivery_mode == 1


def test_consumer_event_classes_from_the_annotation() -> None:
    class Both(Consumer):
        queue = "q"

        async def handle(self, event: Placed | Other, ctx: Context) -> None: ...

    assert Both.event_classes() == {"t.placed": Placed, "t.other": Other}


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({}, "set the class attribute 'queue'"),
        ({"queue": "q"}, "define 'async def handle"),
    ],
)
def test_unusable_consumers_are_config_errors(attrs: dict[str, Any], message: str) -> None:
    cls = type("Bad", (Consumer,), attrs)
    with pytest.raises(ConfigError, match=message):
        cls.event_classes()


def test_consumer_must_annotate_with_event_classes() -> None:
    class Untyped(Consumer):
        queue = "q"

        async def handle(self, event: dict, ctx: Context) -> None:  # type: ignore[override,type-arg]
            ...

    with pytest.raises(ConfigError, match="annotate the event parameter"):
        Untyped.event_classes()


POLICY = RetryPolicy(attempts=3)


@pytest.mark.parametrize(
    ("exc", "attempt", "action", "error_type"),
    [
        (RuntimeError("x"), 1, "retry", "RuntimeError"),
        (RuntimeError("x"), 3, "dead_letter", "RuntimeError"),
        (TimeoutError(), 2, "retry", "TimeoutError"),
        (Retry("later", delay=1), 2, "retry", "Retry"),
        (Retry("later"), 3, "dead_letter", "Retry"),
        (Reject("never"), 1, "dead_letter", "Reject"),
        (DecodeError("bad", "ValidationError"), 1, "dead_letter", "ValidationError"),
    ],
)
def test_classify(exc: Exception, attempt: int, action: str, error_type: str) -> None:
    verdict = classify(exc, attempt, POLICY)
    assert (verdict.action, verdict.error_type) == (action, error_type)
    if isinstance(exc, TimeoutError):
        assert verdict.reason == "timeout"
    if action == "dead_letter" and not isinstance(exc, Reject | DecodeError):
        assert verdict.reason.startswith("gave up after 3 attempts")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "def handle(self, event: Placed, ctx: Context) -> None: ...",
            r"Bad.handle must be 'async def'.*asyncio.to_thread",
        ),
        ("def on_startup(self) -> None: ...", r"Bad.on_startup must be 'async def'"),
        (
            "async def handle(self, event: Placed) -> None: ...",
            r"Bad.handle takes \(self, event, ctx\), not \(self, event\)",
        ),
        ("async def handle(self, event: Placed, *, ctx: Context) -> None: ...", "takes"),
        ("async def idempotency_key(self, event: Placed) -> str: ...", "plain 'def'"),
        ("prefetch = 0", r"Bad.prefetch must be a positive number, got 0"),
        ("timeout = '30'", r"Bad.timeout must be a positive number"),
        ("retry = {'attempts': 3}", r"Bad.retry must be a RetryPolicy"),
        ("queue = 7", r"Bad.queue must be a queue name"),
    ],
)
def test_a_consumer_class_is_checked_when_it_is_defined(body: str, message: str) -> None:
    source = f"class Bad(Consumer):\n    {body}\n"
    with pytest.raises(ConfigError, match=message):
        exec(source, {"Consumer": Consumer, "Context": Context, "Placed": Placed})

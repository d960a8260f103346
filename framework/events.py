"""Events: typed, versioned message bodies, and their JSON codec.

An event is a pydantic model whose class carries its wire ``type`` and ``version``, and
optionally the ``exchange`` it is published to (inherited, so a domain base class can
set it once)::

    class ShopEvent(Event, exchange="shop.events"):
        pass

    class OrderPlaced(ShopEvent, type="order.placed", version=2):
        order_id: str
        items: list[Item]

        @upcaster(from_version=1)
        def _v1(data: dict[str, Any]) -> dict[str, Any]:
            return {**data, "items": data.pop("lines")}

The body on the wire is the JSON of the fields. Decoding goes straight from bytes through
pydantic; an older version is parsed to a dict, passed through the upcasters
(1 -> 2 -> ... -> current) and then validated.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
F = TypeVar("F", bound=Callable[..., Any])


class DecodeError(Exception):
    """A body that cannot become the event: not JSON, wrong schema, unknown version."""

    def __init__(self, reason: str, error_type: str = "DecodeError") -> None:
        super().__init__(reason)
        self.error_type = error_type


def upcaster(from_version: int) -> Callable[[F], F]:
    """Mark a function turning the dict of ``from_version`` into ``from_version + 1``."""

    def mark(fn: F) -> F:
        fn.__kanin_upcasts_from__ = from_version  # type: ignore[attr-defined]
        return fn

    return mark


class Event(BaseModel):
    """Base class of every event. Subclass with ``type=`` and ``version=`` class arguments."""

    model_config = ConfigDict(frozen=True)

    event_type: ClassVar[str] = ""
    event_version: ClassVar[int] = 1
    event_exchange: ClassVar[str | None] = None  # where publish() sends it by default
    upcasters: ClassVar[dict[int, Upcaster]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__()
        event_type = kwargs.get("type")
        version = kwargs.get("version", 1)
        if kwargs.get("exchange") is not None:
            cls.event_exchange = str(kwargs["exchange"])
        if event_type is not None:
            if not isinstance(event_type, str) or not event_type:
                raise TypeError(f"{cls.__name__}: type= must be a non-empty string")
            cls.event_type = event_type
        elif "event_type" not in vars(cls):
            cls.event_type = ""  # a subclass without type= is a base class, not an event type
        if not isinstance(version, int) or version < 1:
            raise TypeError(f"{cls.__name__}: version= must be an integer >= 1")
        cls.event_version = version
        found: dict[int, Upcaster] = {}
        for value in vars(cls).values():
            fn = getattr(value, "__func__", value)  # staticmethod or plain function
            step = getattr(value, "__kanin_upcasts_from__", None)
            step = getattr(fn, "__kanin_upcasts_from__", step)
            if step is not None:
                found[step] = fn
        cls.upcasters = found
        missing = [v for v in range(1, version) if v not in found]
        if found and missing:
            raise TypeError(f"{cls.__name__}: no upcaster from version(s) {missing}")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # `type` and `version` are consumed by __pydantic_init_subclass__.
        kwargs.pop("type", None)
        kwargs.pop("version", None)
        kwargs.pop("exchange", None)
        super().__init_subclass__(**kwargs)

    def to_json(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)

    @classmethod
    def from_json(cls: type[E], body: bytes, version: int | None = None) -> E:
        """Decode ``body`` written as ``version`` (default: the current one)."""
        if version is None or version == cls.event_version:
            try:
                return cls.model_validate_json(body)
            except ValidationError as exc:
                raise _decode_error(exc) from None
        if version > cls.event_version or version < 1:
            raise DecodeError(
                f"{cls.event_type} version {version} is not known "
                f"(this service reads up to version {cls.event_version})",
                "UnknownEventVersion",
            )
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"body is not JSON: {exc}") from None
        except RecursionError:  # nested deeper than the interpreter's stack allows
            raise DecodeError("body is not JSON: nested too deep", "JsonTooDeep") from None
        if not isinstance(data, dict):
            raise DecodeError("body is not a JSON object", "ValidationError")
        for step in range(version, cls.event_version):
            cast = cls.upcasters.get(step)
            if cast is None:
                raise DecodeError(
                    f"{cls.event_type}: no upcaster from version {step}", "UnknownEventVersion"
                )
            try:
                data = cast(dict(data))
            except Exception as exc:
                raise DecodeError(f"upcaster from version {step} failed: {exc!r}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _decode_error(exc) from None


E = TypeVar("E", bound=Event)


def _decode_error(exc: ValidationError) -> DecodeError:
    errors = exc.errors(include_url=False, include_input=False)
    if errors and errors[0]["type"] == "json_invalid":
        return DecodeError(f"body is not JSON: {errors[0]['msg']}")
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}" for e in errors[:5]]
    return DecodeError("; ".join(parts), "ValidationError")


def new_message_id() -> str:
    """A UUIDv7 string: unique, and sortable by creation time."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & (2**62 - 1)
    return str(uuid.UUID(int=value))

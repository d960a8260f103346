"""The limits checked before a body is decoded, without a broker."""

from __future__ import annotations

from typing import Any

import pytest

from framework.events import DecodeError
from framework.limits import Limits, header_bytes, json_depth

LIMITS = Limits(body_bytes=100, json_depth=3, headers=4, header_bytes=200)


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"", 0),
        (b"{}", 1),
        (b'{"a": [1, {"b": []}]}', 4),
        (b'{"a": "[[[[[[", "b": "\\"[[[["}', 1),  # brackets in strings, escaped quotes
        (b"[" * 500 + b"]" * 500, 500),
    ],
)
def test_json_depth_counts_arrays_and_objects_outside_strings(body: bytes, depth: int) -> None:
    assert json_depth(body) == depth


def reason(body: bytes = b"{}", headers: dict[str, Any] | None = None) -> str | None:
    try:
        LIMITS.check(body, headers or {})
    except DecodeError as exc:
        return exc.error_type
    return None


def test_each_limit_names_itself_and_what_is_within_passes() -> None:
    assert reason(b'{"a": "' + b"x" * 91 + b'"}') is None  # exactly 100 bytes
    assert reason(b'{"a": "' + b"x" * 92 + b'"}') == "BodyTooLarge"
    assert reason(b'{"a": [[1]]}') is None
    assert reason(b'{"a": [[[1]]]}') == "JsonTooDeep"
    assert reason(headers={f"h{i}": i for i in range(4)}) is None
    assert reason(headers={f"h{i}": i for i in range(5)}) == "TooManyHeaders"
    assert reason(headers={"blob": bytearray(300)}) == "HeadersTooLarge"


def test_headers_nested_past_the_stack_are_refused_not_raised() -> None:
    table: dict[str, Any] = {}
    for _ in range(5000):
        table = {"t": table}
    with pytest.raises(RecursionError):
        header_bytes(table)
    assert reason(headers={"deep": table}) == "HeadersTooLarge"

"""Limits on what a delivery may carry, checked before its body is decoded.

A body over ``max_body_bytes``, JSON nested deeper than ``max_json_depth``, more headers
than ``max_headers`` or a header table larger than ``max_header_bytes`` (nested tables
and arrays, such as the broker's ``x-death``, count by their contents) is not decoded:
the message goes to the DLQ at once, byte-identical, with ``x-error-type``
``BodyTooLarge``, ``JsonTooDeep``, ``TooManyHeaders`` or ``HeadersTooLarge``. Checking
costs a length, two ``bytes.count`` calls and a walk over the headers for a usual
message; the nesting depth is measured only when the body has more brackets than the
limit allows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from framework.events import DecodeError

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(body: bytes) -> int:
    """How deeply ``body``'s JSON arrays and objects nest (brackets in strings aside)."""
    brackets = _STRING.sub(b'""', body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def header_bytes(value: Any) -> int:
    """About how many bytes a header value takes as AMQP encodes it: strings and byte
    arrays by their length, numbers as 8 bytes, tables and arrays by their contents."""
    if isinstance(value, Mapping):
        return 4 + sum(len(str(key)) + 1 + header_bytes(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return 4 + sum(1 + header_bytes(item) for item in value)
    if isinstance(value, str):
        return 4 + len(value.encode("utf-8", errors="replace"))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 4 + len(value)
    return 8  # numbers, booleans, timestamps, None


@dataclass(frozen=True, slots=True)
class Limits:
    body_bytes: int
    json_depth: int
    headers: int
    header_bytes: int

    def check(self, body: bytes, headers: Mapping[str, Any]) -> None:
        """Raise ``DecodeError`` (its error type names the limit) when a limit is passed."""
        if len(body) > self.body_bytes:
            raise DecodeError(
                f"body of {len(body)} bytes is over the limit of {self.body_bytes} "
                "(max_body_bytes): not decoded",
                "BodyTooLarge",
            )
        if body.count(b"[") + body.count(b"{") > self.json_depth:
            depth = json_depth(body)
            if depth > self.json_depth:
                raise DecodeError(
                    f"JSON nested {depth} deep, over the limit of {self.json_depth} "
                    "(max_json_depth): not decoded",
                    "JsonTooDeep",
                )
        if headers:
            if len(headers) > self.headers:
                raise DecodeError(
                    f"{len(headers)} headers, over the limit of {self.headers} (max_headers)",
                    "TooManyHeaders",
                )
            try:
                size = header_bytes(headers)
            except RecursionError:  # tables nested deeper than the interpreter's stack
                raise DecodeError(
                    "headers nested too deep to measure (max_header_bytes)", "HeadersTooLarge"
                ) from None
            if size > self.header_bytes:
                raise DecodeError(
                    f"headers of about {size} bytes, over the limit of {self.header_bytes} "
                    "(max_header_bytes)",
                    "HeadersTooLarge",
                )

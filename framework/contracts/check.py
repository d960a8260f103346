"""Is the code's contract compatible with a snapshot, or a producer's with a consumer's?

Modes, as in a schema registry: ``backward`` (the new code reads messages written by the
old: no new required field, no narrowed enum or constraint), ``forward`` (the old code
reads messages written by the new: no removed required field, no widened enum or
constraint), ``full`` (both). A retyped field or a renamed field type breaks both. A new
version is fine when the code upcasts from the snapshot's version.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from framework.contracts.shapes import Change, changes, fields
from framework.contracts.snapshot import Contract

Mode = Literal["backward", "forward", "full"]
MODES: dict[str, frozenset[str]] = {
    "backward": frozenset({"backward"}),
    "forward": frozenset({"forward"}),
    "full": frozenset({"backward", "forward"}),
}


@dataclass(frozen=True)
class Finding:
    event: str
    version: int
    rule: str
    detail: str
    breaking: bool

    def line(self) -> str:
        return f"{self.event} v{self.version}: {self.detail}"

    def record(self) -> dict[str, object]:
        return {"event": self.event, "version": self.version, "rule": self.rule,
                "detail": self.detail, "breaking": self.breaking}  # fmt: skip


def _field(event: str, version: int, change: Change, mode: frozenset[str]) -> Finding:
    broken = sorted(change.breaks & mode)
    detail = change.line() + (f" (breaks {' and '.join(broken)})" if broken else "")
    return Finding(event, version, change.rule, detail, bool(broken))


def _upcasts(contract: Contract, since: int) -> bool:
    """Whether ``contract``'s code reads every version from ``since`` on."""
    return all(v in contract.upcasts_from for v in range(since, contract.version))


def against(
    code: Mapping[str, Contract], lock: Mapping[str, Contract], mode: Mode
) -> Iterator[Finding]:
    """The code's event types compared with a snapshot of them."""
    wanted = MODES[mode]
    for name in sorted(set(code) | set(lock)):
        now, then = code.get(name), lock.get(name)
        if now is None:
            assert then is not None
            if then.published_by:
                breaks = "forward" in wanted
                said = "no longer published" + (" (breaks forward)" if breaks else "")
                yield Finding(name, then.version, "no longer published", said, breaks)
            else:
                yield Finding(name, then.version, "no longer consumed", "no longer consumed", False)
            continue
        if then is None:
            yield Finding(name, now.version, "new", "new", False)
            continue
        yield from _versions(name, now, then, wanted)


def _versions(
    name: str, now: Contract, then: Contract, wanted: frozenset[str]
) -> Iterator[Finding]:
    if now.version == then.version:
        for change in changes(fields(then.schema), fields(now.schema)):
            yield _field(name, now.version, change, wanted)
    elif now.version < then.version:
        yield Finding(name, now.version, "version went back",
                      f"version went back from {then.version}", True)  # fmt: skip
    elif _upcasts(now, then.version):
        yield Finding(name, now.version, "new version",
                      f"new version, with an upcaster from version {then.version}: compatible",
                      False)  # fmt: skip
    else:
        said = f"new version without an upcaster from version {then.version}"
        yield Finding(name, now.version, "new version without upcaster", said, True)


def between(
    producer: Mapping[str, Contract], consumer: Mapping[str, Contract]
) -> Iterator[Finding]:
    """Every event the consumer handles, as the producer publishes it: readable?"""
    for name, wants in sorted(consumer.items()):
        if not wants.consumed_by:
            continue
        made = producer.get(name)
        if made is None or not made.published_by:
            yield Finding(name, wants.version, "not published",
                          "consumed here, not published by the producer", True)  # fmt: skip
            continue
        if made.version > wants.version:
            yield Finding(name, made.version, "newer version",
                          f"published as version {made.version}; the consumer reads up to "
                          f"version {wants.version}", True)  # fmt: skip
        elif made.version < wants.version:
            ok = _upcasts(wants, made.version)
            said = "with" if ok else "without"
            yield Finding(name, made.version, "older version",
                          f"published as version {made.version}; the consumer reads version "
                          f"{wants.version}, {said} an upcaster from it", not ok)  # fmt: skip
        else:  # what the producer writes, read by the consumer: the consumer is the old side
            for change in changes(fields(wants.schema), fields(made.schema)):
                yield _field(name, made.version, change, MODES["forward"])

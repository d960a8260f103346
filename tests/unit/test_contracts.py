"""Event contracts: each breaking-change rule in each mode, versions, producer against
consumer, and the command line's answers to bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from framework import Event, upcaster
from framework.contracts import check
from framework.contracts.snapshot import Contract, contract_of

ROOT = Path(__file__).resolve().parents[2]
KANIN = str(Path(sys.executable).parent / "kanin")


def contract(cls: type[Event], consumed: bool = True, published: bool = True) -> Contract:
    made = contract_of(cls)
    made.consumed_by = ["svc.Handler"] if consumed else []
    made.published_by = ["svc"] if published else []
    return made


def verdicts(old: type[Event], new: type[Event]) -> dict[str, list[str]]:
    """For each mode, the rules that break."""
    return {
        mode: [
            f.rule
            for f in check.against({"t": contract(new)}, {"t": contract(old)}, mode)  # type: ignore[arg-type]
            if f.breaking
        ]
        for mode in ("backward", "forward", "full")
    }


class Item(BaseModel):
    sku: str


class LineItem(BaseModel):
    sku: str


class Base(Event, type="t", version=1):
    order_id: str
    note: str | None = None


class Dropped(Event, type="t", version=1):
    note: str | None = None


class Retyped(Event, type="t", version=1):
    order_id: int
    note: str | None = None


class NewRequired(Event, type="t", version=1):
    order_id: str
    note: str | None = None
    total: int


class NewOptional(Event, type="t", version=1):
    order_id: str
    note: str | None = None
    total: int = 0


class NowRequired(Event, type="t", version=1):
    order_id: str
    note: str


class Colors(Event, type="t", version=1):
    color: Literal["red", "green"]


class FewerColors(Event, type="t", version=1):
    color: Literal["red"]


class Bounded(Event, type="t", version=1):
    amount: int = Field(ge=0)


class Tighter(Event, type="t", version=1):
    amount: int = Field(ge=1)


class Items(Event, type="t", version=1):
    items: list[Item]


class LineItems(Event, type="t", version=1):
    items: list[LineItem]


@pytest.mark.parametrize(
    ("old", "new", "backward", "forward"),
    [
        (Base, Dropped, [], ["removed"]),
        (Base, Retyped, ["retyped"], ["retyped"]),
        (Base, NewRequired, ["added required"], []),
        (Base, NewOptional, [], []),
        (Base, NowRequired, ["now required", "retyped"], ["retyped"]),
        (NowRequired, Base, ["retyped"], ["now optional", "retyped"]),
        (Colors, FewerColors, ["narrowed enum"], []),
        (FewerColors, Colors, [], ["widened enum"]),
        (Bounded, Tighter, ["narrowed constraint"], []),
        (Tighter, Bounded, [], ["widened constraint"]),
        (Items, LineItems, ["type renamed"], ["type renamed"]),
    ],
    ids=[
        "removed", "retyped", "new-required", "new-optional", "now-required", "now-optional",
        "narrowed-enum", "widened-enum", "narrowed-constraint", "widened-constraint",
        "type-renamed",
    ],
)  # fmt: skip
def test_each_rule_breaks_the_modes_it_should(
    old: type[Event], new: type[Event], backward: list[str], forward: list[str]
) -> None:
    found = verdicts(old, new)
    assert sorted(found["backward"]) == sorted(backward)
    assert sorted(found["forward"]) == sorted(forward)
    assert sorted(found["full"]) == sorted(set(backward) | set(forward))


def test_a_finding_names_event_version_field_and_rule() -> None:
    (finding,) = [
        f
        for f in check.against({"t": contract(NewRequired)}, {"t": contract(Base)}, "full")
        if f.breaking
    ]
    assert finding.line() == (
        "t v1: field total: new and required, without a default (breaks backward)"
    )


class PlacedV2(Event, type="t", version=2):
    order_id: str
    note: str | None = None
    total: int

    @upcaster(from_version=1)
    @staticmethod
    def _v1(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "total": 0}


class PlacedV2Bare(Event, type="t", version=2):
    order_id: str


def test_a_new_version_is_fine_with_an_upcaster_and_breaking_without() -> None:
    lock = {"t": contract(Base)}
    ok = list(check.against({"t": contract(PlacedV2)}, lock, "full"))
    assert [(f.line(), f.breaking) for f in ok] == [
        ("t v2: new version, with an upcaster from version 1: compatible", False)
    ]
    bare = list(check.against({"t": contract(PlacedV2Bare)}, lock, "backward"))
    assert [(f.rule, f.breaking) for f in bare] == [("new version without upcaster", True)]
    back = list(check.against({"t": contract(Base)}, {"t": contract(PlacedV2)}, "backward"))
    assert [(f.rule, f.breaking) for f in back] == [("version went back", True)]


def test_an_event_no_longer_published_breaks_forward_only() -> None:
    gone = {"t": contract(Base, consumed=False)}
    assert [f.breaking for f in check.against({}, gone, "forward")] == [True]
    assert [f.breaking for f in check.against({}, gone, "backward")] == [False]


def test_the_consumer_contract_flags_a_field_the_producer_dropped() -> None:
    producer = {"t": contract(Dropped, consumed=False)}
    consumer = {"t": contract(Base, published=False)}
    found = [f.line() for f in check.between(producer, consumer) if f.breaking]
    assert found == ["t v1: field order_id: removed (it was required) (breaks forward)"]
    assert [f for f in check.between({"t": contract(Base)}, consumer) if f.breaking] == []
    newer = [f.rule for f in check.between({"t": contract(PlacedV2Bare)}, consumer)]
    assert newer == ["newer version"]
    missing = [f.rule for f in check.between({}, consumer)]
    assert missing == ["not published"]


def kanin(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KANIN, "events", *args], capture_output=True, text=True, timeout=60, cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_the_shop_matches_its_committed_snapshot() -> None:
    result = kanin("check", "workers", "--against", "config/events.lock.json", "--mode", "full")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ("events checked against config/events.lock.json (full): compatible\n")


def test_a_breaking_change_to_a_shop_event_fails_the_check(tmp_path: Path) -> None:
    lock = json.loads((ROOT / "config" / "events.lock.json").read_text())
    schema = lock["events"]["order.placed"]["schema"]
    schema["properties"]["coupon"] = {"type": "string", "title": "Coupon"}
    schema["required"].append("coupon")  # the snapshot had a field the code has dropped
    edited = tmp_path / "events.lock.json"
    edited.write_text(json.dumps(lock))
    result = kanin("check", "workers", "--against", str(edited), "--mode", "forward", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["compatible"] is False
    assert [(f["event"], f["rule"]) for f in report["findings"] if f["breaking"]] == [
        ("order.placed", "removed")
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["check", "workers", "--against", "missing.json"],
         "missing.json: no such lock file (make one: kanin events snapshot)"),
        (["check", "workers", "--against", "README.md"], "README.md: not a lock file of kanin "
         "events snapshot (Expecting value: line 1 column 1 (char 0))"),
        (["check", "nowhere", "--against", "config/events.lock.json"],
         "cannot import 'nowhere': no module named 'nowhere'"),
        (["check", "workers", "--against", "config/events.lock.json", "--mode", "sideways"],
         "--mode 'sideways': write backward, forward or full"),
        (["check", "--producer", "config/events.lock.json"],
         "--producer and --consumer go together, without TARGET or --against"),
        (["snapshot", "nowhere"], "cannot import 'nowhere': no module named 'nowhere'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = kanin(*args)
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n")


def test_snapshot_writes_what_check_reads(tmp_path: Path) -> None:
    out = tmp_path / "shop.lock.json"
    made = kanin("snapshot", "workers", "--out", str(out))
    assert made.stdout == f"5 event types written to {out}\n"
    assert out.read_text() == (ROOT / "config" / "events.lock.json").read_text()
    same = kanin("check", "--producer", str(out), "--consumer", str(out))
    assert same.returncode == 0 and same.stdout.endswith(": compatible\n")

"""An event's JSON Schema as a flat map of fields, and what changed between two of them.

Each field is named by its path (``items[].sku``) and described by its kind (``string``,
``integer``, ``array``, ``object``, ``null|string`` for an optional one), whether it is
required and has a default, the name of its type when it is a model or an enum, its
allowed values and its constraints. ``changes`` compares two such maps field by field.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Effect = Literal["narrows", "widens", "both"]  # what old data can no longer be / new data is

LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")
EXACT = ("pattern", "multipleOf", "format")


@dataclass(frozen=True)
class Field:
    kind: str
    required: bool
    default: bool
    type_name: str | None = None
    enum: tuple[Any, ...] | None = None
    constraints: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    path: str
    rule: str  # removed, added required, retyped, type renamed, now required, ...
    detail: str
    breaks: frozenset[str]  # the modes it breaks: backward, forward

    def line(self) -> str:
        return f"field {self.path}: {self.detail}"


def fields(schema: Mapping[str, Any]) -> dict[str, Field]:
    """The fields of an object schema (pydantic's ``model_json_schema()``), nested ones
    included, by path."""
    defs = schema.get("$defs", {})
    out: dict[str, Field] = {}
    _walk(schema, "", defs, out)
    return out


def _resolve(
    node: Mapping[str, Any], defs: Mapping[str, Any]
) -> tuple[Mapping[str, Any], str | None]:
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        target = defs.get(name, {})
        return target, str(target.get("title") or name)
    return node, None


def _kind(
    node: Mapping[str, Any], defs: Mapping[str, Any]
) -> tuple[str, str | None, Mapping[str, Any]]:
    """Kind, type name, and the branch to look into (the non-null one of an optional)."""
    node, name = _resolve(node, defs)
    branches = node.get("anyOf") or node.get("oneOf")
    if branches:
        resolved = [_resolve(b, defs) for b in branches]
        kinds = sorted({_kind(b, defs)[0] for b in branches})
        named = [n for _, n in resolved if n]
        inner = [b for b, _ in resolved if b.get("type") != "null"]
        return (
            "|".join(kinds),
            name or (named[0] if len(named) == 1 else None),
            (inner[0] if len(inner) == 1 else node),
        )
    kind = node.get("type")
    if kind is None:  # an enum or a const without "type" (older pydantic): from its values
        found = {_JSON.get(type(v), "any") for v in _values(node) or ()}
        kind = found.pop() if len(found) == 1 else "any"
    return str(kind), name, node


def _walk(
    node: Mapping[str, Any], path: str, defs: Mapping[str, Any], out: dict[str, Field]
) -> None:
    node, _ = _resolve(node, defs)
    required = set(node.get("required", ()))
    for name, child in (node.get("properties") or {}).items():
        where = f"{path}.{name}" if path else name
        kind, type_name, inner = _kind(child, defs)
        out[where] = Field(
            kind, name in required, "default" in child, type_name, _values(inner),
            {k: inner[k] for k in (*LOWER, *UPPER, *EXACT) if k in inner},
        )  # fmt: skip
        _descend(inner, where, defs, out)


def _values(node: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The values allowed, when they are listed (an enum; a Literal of one is a const)."""
    if "enum" in node:
        return tuple(node["enum"])
    return (node["const"],) if "const" in node else None


def _descend(
    node: Mapping[str, Any], path: str, defs: Mapping[str, Any], out: dict[str, Field]
) -> None:
    if node.get("properties"):
        _walk(node, path, defs, out)
    items = node.get("items")
    if isinstance(items, Mapping):
        kind, type_name, inner = _kind(items, defs)
        where = f"{path}[]"
        out[where] = Field(
            kind, True, False, type_name, _values(inner),
            {k: inner[k] for k in (*LOWER, *UPPER, *EXACT) if k in inner},
        )  # fmt: skip
        _descend(inner, where, defs, out)


_JSON = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}
BACKWARD = frozenset({"backward"})
FORWARD = frozenset({"forward"})
BOTH = frozenset({"backward", "forward"})


def changes(old: Mapping[str, Field], new: Mapping[str, Field]) -> Iterator[Change]:
    """What changed from ``old`` to ``new``, each with the modes it breaks: backward (new
    code reading old messages), forward (old code reading new messages)."""
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path), new.get(path)
        if after is None:
            assert before is not None
            if before.required:
                yield Change(path, "removed", "removed (it was required)", FORWARD)
            else:
                yield Change(path, "removed", "removed (it was optional)", frozenset())
            continue
        if before is None:
            if after.required and not after.default:
                yield Change(
                    path, "added required", "new and required, without a default", BACKWARD
                )
            continue
        yield from _compare(path, before, after)


def _compare(path: str, before: Field, after: Field) -> Iterator[Change]:
    if before.kind != after.kind:
        yield Change(path, "retyped", f"type {before.kind} became {after.kind}", BOTH)
    if before.type_name != after.type_name and before.type_name and after.type_name:
        yield Change(path, "type renamed",
                     f"type name {before.type_name} became {after.type_name}", BOTH)  # fmt: skip
    if after.required and not before.required and not after.default:
        yield Change(path, "now required", "was optional, now required", BACKWARD)
    if before.required and not after.required:
        yield Change(path, "now optional", "was required, now optional", FORWARD)
    if before.enum is not None and after.enum is not None:
        gone = [v for v in before.enum if v not in after.enum]
        new = [v for v in after.enum if v not in before.enum]
        if gone:
            yield Change(path, "narrowed enum", f"values {gone} no longer allowed", BACKWARD)
        if new:
            yield Change(path, "widened enum", f"values {new} newly allowed", FORWARD)
    yield from _constraints(path, before.constraints, after.constraints)


def _constraints(
    path: str, before: Mapping[str, Any], after: Mapping[str, Any]
) -> Iterator[Change]:
    for key in (*LOWER, *UPPER, *EXACT):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if key in EXACT:
            tighter = new is not None
            looser = old is not None
        else:
            below = key in LOWER
            tighter = old is None or (new is not None and (new > old if below else new < old))
            looser = new is None or (old is not None and (new < old if below else new > old))
        said = f"{key} {_text(old)} became {_text(new)}"
        if tighter:
            yield Change(path, "narrowed constraint", said, BACKWARD)
        if looser:
            yield Change(path, "widened constraint", said, FORWARD)


def _text(value: Any) -> str:
    return "none" if value is None else repr(value)

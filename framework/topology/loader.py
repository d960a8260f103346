"""Read a topology YAML file: parse, expand ``${VAR}``, validate, check references.

Every problem is reported with the file, line and column, the path inside the file
(``queues[2].retry.initial``) and the reason, all at once, as a ``TopologyError``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from framework.errors import Problem, TopologyError
from framework.topology.check import check
from framework.topology.model import Topology

Loc = tuple[str | int, ...]
Marks = dict[Loc, tuple[int, int]]

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?-)([^}]*))?\}")


class _EnvError(Exception):
    pass


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}`` and ``${VAR-default}``; ``$$`` is a literal ``$``.

    ``:-`` uses the default when the variable is unset or empty, ``-`` only when unset.
    """

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, default = m.group(1), m.group(2), m.group(3)
        value = env.get(name)
        if op == ":-" and not value:
            return default
        if op == "-" and value is None:
            return default
        if value is None:
            raise _EnvError(f"environment variable {name} is not set (write ${{{name}:-default}})")
        return value

    return _VAR.sub(repl, text)


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Reader:
    """Builds plain Python data from the YAML node graph, remembering where each value was."""

    def __init__(self, loader: yaml.SafeLoader, env: Mapping[str, str], file: str) -> None:
        self.loader = loader
        self.env = env
        self.file = file
        self.marks: Marks = {}
        self.problems: list[Problem] = []

    def problem(self, node: yaml.Node, loc: Loc, reason: str) -> None:
        mark = node.start_mark
        self.problems.append(
            Problem(self.file, mark.line + 1, mark.column + 1, format_loc(loc), reason)
        )

    def read(self, node: yaml.Node, loc: Loc) -> Any:
        self.marks.setdefault(loc, (node.start_mark.line + 1, node.start_mark.column + 1))
        if isinstance(node, yaml.MappingNode):
            own: set[Any] = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key in own and key_node.tag != "tag:yaml.org,2002:merge":
                    self.problem(key_node, (*loc, str(key)), f"key {key!r} appears twice")
                own.add(key)
            self.loader.flatten_mapping(node)  # '<<' merge keys: the mapping's own keys win
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = (
                    self.read_scalar(key_node, loc)
                    if isinstance(key_node, yaml.ScalarNode)
                    else None
                )
                if not isinstance(key, str):
                    self.problem(key_node, loc, "keys must be strings")
                    continue
                mark = key_node.start_mark
                self.marks[(*loc, key)] = (mark.line + 1, mark.column + 1)
                out[key] = self.read(value_node, (*loc, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.read(item, (*loc, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)  # the composer makes nothing else
        return self.read_scalar(node, loc)

    def read_scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        if isinstance(node.value, str) and "$" in node.value:
            try:
                text = expand_env(node.value, self.env)
            except _EnvError as exc:
                self.problem(node, loc, str(exc))
                return None
            if text != node.value:
                tag = node.tag
                if node.style is None:  # plain scalar: '${N:-5}' becomes the int 5
                    tag = self.loader.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
                    if not text:  # an empty expansion is an empty string, not null
                        tag = "tag:yaml.org,2002:str"
                node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark, node.style)
        return self.loader.construct_object(node, deep=True)


def _message(error: Mapping[str, Any]) -> tuple[Loc, str]:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return loc, f"unknown key {loc[-1]!r}"
    if kind == "missing":
        return loc[:-1], f"missing required key {loc[-1]!r}"
    msg = str(error["msg"]).removeprefix("Value error, ")
    if kind in ("literal_error", "enum") or kind.endswith("_type") or kind.endswith("_parsing"):
        msg += f" (got {error['input']!r})"
    return loc, msg


def _locate(marks: Marks, loc: Loc) -> tuple[int | None, int | None]:
    for end in range(len(loc), -1, -1):
        if loc[:end] in marks:
            return marks[loc[:end]]
    return None, None


def load_topology(path: str | Path, env: Mapping[str, str] | None = None) -> Topology:
    """Load and fully check a topology file; raise ``TopologyError`` listing every problem."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TopologyError(
            [Problem(file, None, None, "", f"cannot read file: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise TopologyError(
            [Problem(file, None, None, "", f"not UTF-8 text: {exc.reason}")]
        ) from None
    return parse_topology(text, file, os.environ if env is None else env)


def _unreadable(text: str, file: str, exc: yaml.reader.ReaderError) -> TopologyError:
    """A character YAML does not allow (a control character, say), with its line."""
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
    reason = (
        f"character U+{exc.character:04X} is not allowed in YAML"
        if isinstance(exc.character, int)
        else f"not YAML text: {exc.reason}"
    )
    return TopologyError([Problem(file, line, column, "", reason)])


def parse_topology(text: str, file: str, env: Mapping[str, str]) -> Topology:
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        raise _unreadable(text, file, exc) from None
    try:
        try:
            node = loader.get_single_node()
        except yaml.reader.ReaderError as exc:
            raise _unreadable(text, file, exc) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            reason = f"YAML syntax error: {exc.problem or exc.context}"
            line = mark.line + 1 if mark else None
            column = mark.column + 1 if mark else None
            raise TopologyError([Problem(file, line, column, "", reason)]) from None
        except yaml.YAMLError as exc:
            raise TopologyError([Problem(file, None, None, "", f"YAML error: {exc}")]) from None
        if node is None:
            raise TopologyError([Problem(file, None, None, "", "the file is empty")])
        reader = _Reader(loader, env, file)
        data = reader.read(node, ())
    finally:
        loader.dispose()
    if reader.problems:
        raise TopologyError(reader.problems)
    if not isinstance(data, dict):
        line, column = reader.marks[()]
        reason = "the top level must be a mapping with exchanges, queues and bindings"
        raise TopologyError([Problem(file, line, column, "", reason)])
    try:
        topology = Topology.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc, reason = _message(error)
            problems.append(Problem(file, *_locate(reader.marks, loc), format_loc(loc), reason))
        raise TopologyError(problems) from None
    cross = check(topology)
    if cross:
        raise TopologyError(
            [Problem(file, *_locate(reader.marks, loc), format_loc(loc), r) for loc, r in cross]
        )
    sources = {"": file}
    for loc, (line, _) in reader.marks.items():
        if len(loc) in (2, 3) and loc[0] in ("exchanges", "queues", "bindings"):
            sources[format_loc(loc)] = f"{file}:{line}"
    return topology.with_sources(sources)

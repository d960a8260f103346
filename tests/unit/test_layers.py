"""Features are leaves: the core never imports them, and they never import the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

FRAMEWORK = Path(__file__).resolve().parents[2] / "framework"
LEAVES = ("ops", "eventlog", "outbox", "contracts")


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def modules(where: Path) -> list[Path]:
    return sorted(where.rglob("*.py"))


@pytest.mark.parametrize("leaf", LEAVES)
def test_the_core_never_imports_a_feature(leaf: str) -> None:
    core = [
        path
        for path in modules(FRAMEWORK)
        if path.relative_to(FRAMEWORK).parts[0] not in ("cli", *LEAVES)
    ]
    assert len(core) > 30
    found = {
        str(path.relative_to(FRAMEWORK)): name
        for path in core
        for name in imported(path)
        if name == f"framework.{leaf}" or name.startswith(f"framework.{leaf}.")
    }
    assert found == {}


@pytest.mark.parametrize("leaf", LEAVES)
def test_a_feature_imports_neither_the_cli_nor_another_feature(leaf: str) -> None:
    others = [f"framework.{name}" for name in (*LEAVES, "cli") if name != leaf]
    found = {
        str(path.relative_to(FRAMEWORK)): name
        for path in modules(FRAMEWORK / leaf)
        for name in imported(path)
        if any(name == other or name.startswith(other + ".") for other in others)
    }
    assert found == {}

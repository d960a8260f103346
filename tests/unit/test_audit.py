"""make audit's verdicts (tests/audit.py), from pip-audit reports of each kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

AUDIT = Path(__file__).resolve().parents[1] / "audit.py"
CLEAN = {"name": "redis", "version": "8.1.0", "vulns": []}
VULNERABLE = {
    "name": "urllib3", "version": "1.26.0",
    "vulns": [{"id": "GHSA-v845-jxx5-vc9f", "fix_versions": ["1.26.17", "2.0.6"]}],
}  # fmt: skip
SKIPPED = {"name": "yarl", "skip_reason": "Dependency not found on PyPI and could not be audited"}


def audit(tmp_path: Path, packages: list[dict[str, object]], *flags: str) -> tuple[int, str]:
    fake = tmp_path / "pip-audit"
    report = json.dumps({"dependencies": packages, "fixes": []})
    fake.write_text(f"#!{sys.executable}\nprint({report!r})\n")
    fake.chmod(0o755)
    done = subprocess.run(
        [sys.executable, str(AUDIT), "--pip-audit", str(fake), "--path", str(tmp_path), *flags],
        capture_output=True, text=True,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("packages", "flags", "code", "says"),
    [
        ([CLEAN], (), 0, "1 of 1 packages audited, 0 vulnerable"),
        ([CLEAN, VULNERABLE], ("--allow-incomplete",), 1,
         "urllib3 1.26.0: GHSA-v845-jxx5-vc9f (fixed in 1.26.17, 2.0.6)"),
        ([CLEAN, SKIPPED], (), 3, "INCOMPLETE, 1 packages not audited"),
        ([CLEAN, SKIPPED], ("--allow-incomplete",), 0, "INCOMPLETE, 1 packages not audited"),
    ],
)  # fmt: skip
def test_verdicts(
    tmp_path: Path, packages: list[dict[str, object]], flags: tuple[str, ...], code: int, says: str
) -> None:
    got, output = audit(tmp_path, packages, *flags)
    assert got == code and says in output, output

"""Which versions of a dependency kanin's fast paths may run on.

A fast path reads a dependency's private names for a measured win: aiormq's in
``transport/aiormq_paths.py``, the OpenTelemetry SDK's in ``spans.py``. Private names can
change in any release, so a fast path runs only on the versions the test suite has run it
against (the range below; ``make test`` runs the suite at both of its ends) and only
while ``KANIN_FAST_PATHS`` is on. Anything else takes the dependency's public API, which
gives the same results more slowly, and says so once per process.
"""

from __future__ import annotations

import logging
from functools import cache
from importlib.metadata import PackageNotFoundError, version

log = logging.getLogger("kanin.versions")

# dependency -> (lowest, highest) version the fast paths were tested with, both included
TESTED: dict[str, tuple[str, str]] = {
    "aiormq": ("7.2.1", "7.2.4"),
    "opentelemetry-sdk": ("1.25.0", "1.45.2"),
}
_warned: set[str] = set()


@cache
def installed(dist: str) -> str | None:
    """The installed version of ``dist``, or None."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _numbers(text: str) -> tuple[int, ...] | None:
    """``1.45.2`` -> (1, 45, 2); a pre-release, post-release or local version -> None."""
    parts = text.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None


def is_tested(dist: str) -> bool:
    """Whether the installed ``dist`` lies within the tested range."""
    current = installed(dist)
    low, high = TESTED[dist]
    numbers = None if current is None else _numbers(current)
    lowest, highest = _numbers(low), _numbers(high)
    if numbers is None or lowest is None or highest is None:
        return False
    return lowest <= numbers <= highest


def fast_path(dist: str, allowed: bool = True) -> bool:
    """Whether a fast path through ``dist``'s internals may run here: ``allowed`` (the
    ``KANIN_FAST_PATHS`` setting) and a tested version. An untested version is logged
    once per process, naming the version and the range."""
    if not allowed:
        return False
    if is_tested(dist):
        return True
    if dist not in _warned:
        _warned.add(dist)
        low, high = TESTED[dist]
        log.warning(
            "%s %s is not a version kanin's fast paths were tested with (%s to %s): "
            "using its public API instead (same results, slower)",
            dist, installed(dist), low, high,
        )  # fmt: skip
    return False

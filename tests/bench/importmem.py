"""Where a process's memory goes at start: the RSS each top-level package (each module of
kanin's) adds when first imported, its own share only (what it imports from other
packages is counted there), and what the process added after its imports.

    python tests/bench/importmem.py -m framework.cli run workers.orders   # Ctrl-C to stop
    python tests/bench/importmem.py -c "import aio_pika"

The table goes to stderr when the process ends, with the RSS at that moment and at start.
"""

from __future__ import annotations

import atexit
import builtins
import os
import runpy
import sys
from collections import defaultdict

PAGE = os.sysconf("SC_PAGE_SIZE")
START = 0


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


own: defaultdict[str, int] = defaultdict(int)
_stack: list[list[int]] = []  # per import in progress: [rss at entry, rss its imports added]
_original = builtins.__import__


def _import(name: str, globals=None, locals=None, fromlist=(), level=0):  # type: ignore[no-untyped-def]
    if level or name in sys.modules:
        return _original(name, globals, locals, fromlist, level)
    frame = [rss(), 0]
    _stack.append(frame)
    try:
        return _original(name, globals, locals, fromlist, level)
    finally:
        _stack.pop()
        total = rss() - frame[0]
        own[name if name.startswith("framework") else name.partition(".")[0]] += total - frame[1]
        if _stack:
            _stack[-1][1] += total


def report() -> None:
    rows = sorted(own.items(), key=lambda item: -item[1])
    now, imports = rss(), sum(own.values())
    print(
        f"\nRSS at start {START / 2**20:.1f} MB, now {now / 2**20:.1f} MB: imports "
        f"{imports / 2**20:.1f} MB, the rest {(now - START - imports) / 2**20:.1f} MB",
        file=sys.stderr,
    )
    print(f"{'package':<28} {'own MB':>8}", file=sys.stderr)
    for package, size in rows:
        if size >= 256 * 1024:
            print(f"{package:<28} {size / 2**20:8.1f}", file=sys.stderr)


def main() -> None:
    global START
    START = rss()
    builtins.__import__ = _import
    atexit.register(report)
    if sys.argv[1] == "-c":
        exec(compile(sys.argv[2], "<string>", "exec"), {"__name__": "__main__"})
        return
    module = sys.argv[2]
    sys.argv = [module, *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

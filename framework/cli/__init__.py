"""The ``kanin`` command line. Exit codes: 0 ok, 1 runtime or broker error, 2 usage or config."""

from __future__ import annotations

from framework.cli import (
    asyncapi,
    catalog,
    demo,
    dlq,
    events,
    outbox,
    publish,
    replay,
    run,
    status,
    topology,
)
from framework.cli.app import app, load_settings, main

__all__ = [
    "app",
    "asyncapi",
    "catalog",
    "demo",
    "dlq",
    "events",
    "load_settings",
    "main",
    "outbox",
    "publish",
    "replay",
    "run",
    "status",
    "topology",
]
